//! The egress policy of a Nimbus server: which destinations it connects to on a tenant's behalf
//! (wasm outbound HTTP, OpenFaaS callbacks, MQTT/NATS/PostgreSQL feeds, and, as packet
//! filters, the process sandbox's outbound network).
//!
//! - [`deny_table`]: loopback, unspecified, link-local, private, CGNAT, reserved and multicast
//!   ranges and the IPv6 forms that embed IPv4, checked on every resolved address.
//! - [`AllowEntry`]: what the operator opens (`--allow-egress 127.0.0.1:1883`, CIDRs, ports).
//! - [`EgressPolicy`]: the decision for an address, resolution that checks every A/AAAA answer,
//!   and connects that dial the checked address (so DNS rebinding cannot bypass the check),
//!   within a timeout. Errors shown to tenants never tell a closed port from a filtered one.
//!
//! See `docs/security.md` ("Egress policy").

mod allow;
#[cfg(feature = "reqwest")]
mod http;
mod policy;
mod table;

pub use allow::{AllowEntry, SpecError, parse_list};
#[cfg(feature = "reqwest")]
pub use http::PolicyResolver;
pub use policy::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESOLVE_TIMEOUT, EgressConfig, EgressError, EgressPolicy,
    host_addresses, host_port,
};
pub use table::{DenyReason, canonical, classify, deny_table};
