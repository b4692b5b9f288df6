"""Serving: metasup's front door for an agent that serves HTTP (SPEC, "Serving")."""
