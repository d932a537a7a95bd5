"""`python -m app`: the service on this machine with an embedded SMTP server and its mailbox pages."""
