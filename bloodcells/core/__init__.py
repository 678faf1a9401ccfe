"""Core: errors, atomic files, the fence around other libraries' private APIs, Hydra glue and
the one CLI wrapper. Imports no other room."""
