//! OTLP traces (filled in by the traces work).
