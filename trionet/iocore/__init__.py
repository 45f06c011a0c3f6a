"""trionet.iocore: Apache Traffic Server's iocore event contract on trionet.

Code written in ATS's style -- continuations with ``handle_event(event, data)``,
VIOs over ``MIOBuffer`` objects, ``main_accept`` / ``connect_re`` -- runs here call
for call, with ATS's event numbers. The shim is thin: it has no socket code;
every byte goes through :class:`trionet.Connection`, every accept through
:meth:`trionet.NetProcessor.serve`, every connect through
:meth:`trionet.NetProcessor.connect`, every timeout through the processor's
TimeoutCop.

Mapping from ATS (the seed walk-through) to trionet, call for call::

    UnixNetProcessor::start()                 async with open_net_processor(net) as unp
    NetHandler::mainNetEvent, epoll_wait      trio's run loop; a reader and a writer task per VC
    InactivityCop::check_inactivity (1 s)     the native TimeoutCop, via a timeout hook
    netProcessor.main_accept(cont, fd, opt)   unp.main_accept(cont, fd, opts)
    accept_internal, NetAccept, accept loop   NetProcessor.serve(AcceptOptions(fd=fd))
    vc->acceptEvent                           serve's connection task builds the NetVConnection
    cont->handleEvent(NET_EVENT_ACCEPT, vc)   cont.handle_event(NET_EVENT_ACCEPT, vc), mutex held
    netProcessor.connect_re(cont, addr, opt)  unp.connect_re(cont, (host, port), options)
    netProcessor.connect_s(cont, addr, t)     unp.connect_s(cont, (host, port), timeout)
    SET_HANDLER(&X::h)                        self.set_handler(self.h)
    new_ProxyMutex(), MUTEX_TRY_LOCK          ProxyMutex(), mutex.try_lock()
    eventProcessor.schedule_imm/in/at/every   unp.event_processor.schedule_imm/in/at/every
    e->schedule_every(NET_PERIOD)             event.schedule_every(period)
    HRTIME_SECONDS(n)                         n (trio seconds)
    new_MIOBuffer(BUFFER_SIZE_INDEX_32K)      MIOBuffer(32768)
    vc->do_io_read(c, n, buf), do_io_write    vc.do_io_read(c, n, buf), vc.do_io_write(c, n, r)
    vio->reenable(), vio->ndone, ntodo()      vio.reenable(), vio.ndone, vio.ntodo()
    vc->do_io_close(), do_io_shutdown(how)    vc.do_io_close(), vc.do_io_shutdown(how)
    net_read_io, write_to_net                 NetVConnection's reader and writer tasks
"""

import typing as _typing

from ._buffer import DEFAULT_BUFFER_SIZE as DEFAULT_BUFFER_SIZE
from ._buffer import IOBufferReader as IOBufferReader
from ._buffer import MIOBuffer as MIOBuffer
from ._codes import ENET_CONNECT_FAILED as ENET_CONNECT_FAILED
from ._codes import ENET_CONNECT_TIMEOUT as ENET_CONNECT_TIMEOUT
from ._codes import ENET_THROTTLING as ENET_THROTTLING
from ._codes import EVENT_CALL as EVENT_CALL
from ._codes import EVENT_CONT as EVENT_CONT
from ._codes import EVENT_DONE as EVENT_DONE
from ._codes import EVENT_ERROR as EVENT_ERROR
from ._codes import EVENT_IMMEDIATE as EVENT_IMMEDIATE
from ._codes import EVENT_INTERVAL as EVENT_INTERVAL
from ._codes import EVENT_NONE as EVENT_NONE
from ._codes import EVENT_POLL as EVENT_POLL
from ._codes import IO_SHUTDOWN_READ as IO_SHUTDOWN_READ
from ._codes import IO_SHUTDOWN_READWRITE as IO_SHUTDOWN_READWRITE
from ._codes import IO_SHUTDOWN_WRITE as IO_SHUTDOWN_WRITE
from ._codes import NET_EVENT_ACCEPT as NET_EVENT_ACCEPT
from ._codes import NET_EVENT_ACCEPT_FAILED as NET_EVENT_ACCEPT_FAILED
from ._codes import NET_EVENT_ACCEPT_SUCCEED as NET_EVENT_ACCEPT_SUCCEED
from ._codes import NET_EVENT_OPEN as NET_EVENT_OPEN
from ._codes import NET_EVENT_OPEN_FAILED as NET_EVENT_OPEN_FAILED
from ._codes import VC_EVENT_ACTIVE_TIMEOUT as VC_EVENT_ACTIVE_TIMEOUT
from ._codes import VC_EVENT_EOS as VC_EVENT_EOS
from ._codes import VC_EVENT_ERROR as VC_EVENT_ERROR
from ._codes import VC_EVENT_INACTIVITY_TIMEOUT as VC_EVENT_INACTIVITY_TIMEOUT
from ._codes import VC_EVENT_READ_COMPLETE as VC_EVENT_READ_COMPLETE
from ._codes import VC_EVENT_READ_READY as VC_EVENT_READ_READY
from ._codes import VC_EVENT_WRITE_COMPLETE as VC_EVENT_WRITE_COMPLETE
from ._codes import VC_EVENT_WRITE_READY as VC_EVENT_WRITE_READY
from ._codes import event_name as event_name
from ._continuation import Action as Action
from ._continuation import Continuation as Continuation
from ._continuation import ContinuationError as ContinuationError
from ._continuation import EventHandler as _EventHandler
from ._continuation import ProxyMutex as ProxyMutex
from ._event import Event as Event
from ._event import EventProcessor as EventProcessor
from ._processor import ConnectAction as ConnectAction
from ._processor import NetAcceptAction as NetAcceptAction
from ._processor import UnixNetProcessor as UnixNetProcessor
from ._processor import open_net_processor as open_net_processor
from ._vconnection import DEFAULT_INACTIVITY_TIMEOUT as DEFAULT_INACTIVITY_TIMEOUT
from ._vconnection import NetVConnection as NetVConnection
from ._vio import INT64_MAX as INT64_MAX
from ._vio import VIO as VIO

# Assigned here with its description (see trionet/__init__.py's type aliases).
EventHandler: _typing.TypeAlias = _EventHandler
"""A continuation's handler, ATS's ``int handler(int event, void *data)``.
``handler(event, data)`` returns ``EVENT_DONE`` or ``EVENT_CONT``."""
