//! kata-agent-client (work in progress).
