"""Stream processors: parse, resolve, filter, correlate and promote mail.

Pure decision logic (parse, directory, correlate, promote, engine) plus the faust
app and the thin agents that wire it to topics and tables.
"""
