"""The serving core: everything between a decoded request and a backend call."""
