//! Worker node.
