//! piw-monitor
