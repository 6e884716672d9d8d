"""Contracts between the parts of tidings: topic payloads, the topic table, codecs,
typed configuration, metric definitions and the dead-letter format.

Imports none of tidings' other packages.
"""
