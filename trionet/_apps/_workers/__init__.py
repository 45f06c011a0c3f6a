"""Worker processes sharing listening ports (see ``_supervisor``)."""
