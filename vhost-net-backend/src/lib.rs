//! vhost-net-backend: a user-space virtio-net vhost-user backend.
