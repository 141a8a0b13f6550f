//! The vhost-net-backend policy ABI.
