"""The bundled demo: a self-modifying agent and the scenario `metasup demo` runs it in."""
