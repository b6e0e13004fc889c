"""Configuration: TOML files loaded into typed, frozen dataclasses, with errors that
name the offending key."""
