//! mote edge agent: the `mote` command (run, build, verify, serve, infer)
//! and the node that serves deployments over HTTPS and QUIC.
//!
//! The library side exposes the `mote/1` QUIC client ([`quic::QuicClient`])
//! for Rust programs that call a node.

mod build;
pub mod busy_poll;
pub mod cli;
mod config;
pub mod grpc;
mod http;
mod intake;
pub mod jobs;
pub mod market;
mod metrics;
mod node;
mod openai;
pub mod quic;
pub mod serve;
pub mod tls;
