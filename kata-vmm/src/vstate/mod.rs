//! vCPU setup (not yet).
