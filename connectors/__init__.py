"""The mail-server edge: one module per protocol plus the connector runtime
(ownership, scheduling, cursors). Knows nothing about correlation."""
