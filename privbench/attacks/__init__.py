"""Built-in attacks; importing this package registers them (none are finished yet)."""
