//! The CRI messages (`runtime.v1`), generated from `testkit/proto/cri.proto` by rust-protobuf at
//! build time (see `build.rs`): the subset of k8s.io/cri-api's api.proto that one pod's
//! lifecycle needs, with CRI's field numbers.

#![allow(
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_results,
    unused_mut,
    dead_code,
    trivial_casts,
    unknown_lints,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]

include!(concat!(env!("OUT_DIR"), "/cri/cri.rs"));
