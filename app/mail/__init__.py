"""The outgoing email: its message and headers, the session with the relay, and what each delivery outcome means."""
