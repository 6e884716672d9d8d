"""The store edge: the ClickHouse writer, error store and DLQ handling."""
