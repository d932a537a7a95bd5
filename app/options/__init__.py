"""options.ini: one frozen dataclass per section, checked, hot-reloaded, and shared by the processes of a node."""
