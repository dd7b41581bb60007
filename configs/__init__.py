"""Configs of the lliejax methods, one file per method (installed as ``lliejax.configs``)."""
