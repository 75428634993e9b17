//! Operating-system calls the proxy and the control plane share, each behind a safe function:
//! the open-files limit (`open_files`), children that die with their parent (`child`),
//! background threads' priority (`priority`). A crate of its own so that both binaries use one
//! copy of the `unsafe` and its tests, and so that the `unsafe` stays out of the crates that
//! serve traffic.
#![deny(unsafe_code)]

pub mod child;
pub mod open_files;
pub mod priority;
