//! SPDY/3.1 as Kubernetes speaks it over an upgraded HTTP connection.

pub mod frame;
pub mod session;

pub use session::{Session, Stream};
