"""Model structure helpers: scopes (which layers a method touches)."""
