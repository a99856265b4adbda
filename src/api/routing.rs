//! Which role serves each HTTP path: one table, read both by instances (to
//! decide whether they answer a request or leave it to another instance) and
//! by `lattice routes --nginx` (to send each request to an instance that
//! serves it), so the proxy and the instances cannot disagree.
//!
//! The table follows DESIGN §1: `sync` serves the long-polling endpoints,
//! `media` the media repository, `federation_reader` the federation and key
//! APIs, and `client` every other Client-Server path. The writers of the other
//! streams (typing, receipts, ...) serve no HTTP of their own: a `client`
//! instance handles those requests and forwards the writes through mailboxes.
//!
//! Patterns are regular expressions in the subset that Rust's `regex` and
//! nginx's PCRE read the same way (anchors, classes, alternation), matched
//! against the path without its query string; the first match wins, in the
//! order of [`ROUTES`].

use std::sync::LazyLock;

use regex::Regex;

use crate::roles::Role;

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// A regular expression over the request path (percent-encoded, as sent).
    pub pattern: &'static str,
    pub role: Role,
}

/// The role of a path no row matches: `client` answers it (with
/// `404 M_UNRECOGNIZED` when it is no endpoint at all).
pub const DEFAULT_ROLE: Role = Role::Client;

/// The routing table, most specific first.
pub const ROUTES: &[Route] = &[
    Route {
        pattern: r"^/_matrix/client/(r0|v3)/sync$",
        role: Role::Sync,
    },
    Route {
        pattern: r"^/_matrix/client/unstable/org\.matrix\.simplified_msc3575/sync$",
        role: Role::Sync,
    },
    Route {
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/events$",
        role: Role::Sync,
    },
    Route {
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
        role: Role::Sync,
    },
    Route {
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
        role: Role::Sync,
    },
    Route {
        pattern: r"^/_matrix/client/v1/media/",
        role: Role::Media,
    },
    Route {
        pattern: r"^/_matrix/media/",
        role: Role::Media,
    },
    Route {
        pattern: r"^/_matrix/federation/",
        role: Role::FederationReader,
    },
    Route {
        pattern: r"^/_matrix/key/",
        role: Role::FederationReader,
    },
    Route {
        pattern: r"^/_matrix/client/",
        role: Role::Client,
    },
    Route {
        pattern: r"^/\.well-known/matrix/(client|support)$",
        role: Role::Client,
    },
];

/// Paths every instance answers whatever its roles: `/health` and
/// `/metrics` describe the instance itself, and the admin API needs no
/// particular role. An entry ending in `/` is a prefix.
pub const EVERY_INSTANCE: &[&str] = &["/health", "/metrics", "/_lattice/admin/"];

/// [`ROUTES`], compiled once. The table is constant, so this is data, not
/// state shared between nodes.
static COMPILED: LazyLock<Vec<(Regex, Role)>> = LazyLock::new(|| {
    ROUTES
        .iter()
        .filter_map(|route| Regex::new(route.pattern).ok().map(|re| (re, route.role)))
        .collect()
});

/// The role whose instances serve `method path`. `path` is the request path
/// without the query string. The method does not change the answer today; it
/// is part of the question because writer endpoints may one day be routed
/// straight to their writer (Synapse sends `PUT /devices/{deviceId}` to the
/// device-lists writer, but not `GET`).
pub fn role_for_path(_method: &actix_web::http::Method, path: &str) -> Role {
    COMPILED
        .iter()
        .find(|(pattern, _)| pattern.is_match(path))
        .map_or(DEFAULT_ROLE, |(_, role)| *role)
}

/// Whether `path` is answered by every instance, whatever its roles (an
/// instance checks this before [`role_for_path`]).
pub fn served_by_every_instance(path: &str) -> bool {
    EVERY_INSTANCE
        .iter()
        .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)))
}

/// The roles that serve HTTP at all, in table order: the upstreams a proxy
/// needs.
pub fn http_roles() -> Vec<Role> {
    let mut roles = Vec::new();
    for route in ROUTES {
        if !roles.contains(&route.role) {
            roles.push(route.role);
        }
    }
    if !roles.contains(&DEFAULT_ROLE) {
        roles.push(DEFAULT_ROLE);
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::Method;

    #[test]
    fn every_pattern_compiles() {
        for route in ROUTES {
            assert!(Regex::new(route.pattern).is_ok(), "{}", route.pattern);
        }
        assert_eq!(COMPILED.len(), ROUTES.len());
    }

    #[test]
    fn paths_go_to_the_roles_of_design_section_1() {
        let cases = [
            ("GET", "/_matrix/client/v3/sync", Role::Sync),
            ("GET", "/_matrix/client/r0/sync", Role::Sync),
            ("GET", "/_matrix/client/v3/events", Role::Sync),
            ("GET", "/_matrix/client/api/v1/initialSync", Role::Sync),
            (
                "GET",
                "/_matrix/client/v3/rooms/!a:example.org/initialSync",
                Role::Sync,
            ),
            (
                "POST",
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                Role::Sync,
            ),
            // Not the sync endpoint, only sharing a prefix with it.
            ("GET", "/_matrix/client/v3/syncx", Role::Client),
            ("GET", "/_matrix/client/v3/events/$event", Role::Client),
            (
                "PUT",
                "/_matrix/client/v3/rooms/!a:example.org/send/m.room.message/1",
                Role::Client,
            ),
            ("POST", "/_matrix/client/v3/login", Role::Client),
            ("GET", "/_matrix/client/versions", Role::Client),
            (
                "PUT",
                "/_matrix/client/v3/rooms/!a:example.org/typing/@a:example.org",
                Role::Client,
            ),
            ("GET", "/.well-known/matrix/client", Role::Client),
            ("GET", "/.well-known/matrix/support", Role::Client),
            ("GET", "/_matrix/media/v3/config", Role::Media),
            (
                "GET",
                "/_matrix/client/v1/media/download/example.org/abc",
                Role::Media,
            ),
            (
                "PUT",
                "/_matrix/federation/v1/send/1",
                Role::FederationReader,
            ),
            ("GET", "/_matrix/key/v2/server", Role::FederationReader),
            ("GET", "/_lattice/admin/v1/actors", Role::Client),
            ("GET", "/", Role::Client),
        ];
        for (method, path, role) in cases {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            assert_eq!(role_for_path(&method, path), role, "{method} {path}");
        }
    }

    #[test]
    fn health_metrics_and_admin_are_everywhere() {
        assert!(served_by_every_instance("/health"));
        assert!(served_by_every_instance("/metrics"));
        assert!(served_by_every_instance("/_lattice/admin/v1/actors"));
        assert!(!served_by_every_instance("/healthz"));
        assert!(!served_by_every_instance("/_matrix/client/v3/sync"));
    }

    #[test]
    fn the_http_roles_are_the_four_of_the_table() {
        assert_eq!(
            http_roles(),
            vec![
                Role::Sync,
                Role::Media,
                Role::FederationReader,
                Role::Client
            ]
        );
    }
}
