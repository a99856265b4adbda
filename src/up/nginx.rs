//! `lattice routes --nginx`: an nginx configuration that sends each request of
//! a topology to an instance that serves it, from the same table instances
//! use ([`crate::api::routing`]).
//!
//! One upstream per HTTP role, listing the instances with that role; one
//! regex `location` per row of the table, in table order (nginx tries regex
//! locations in the order they appear and takes the first match, as
//! [`role_for_path`](crate::api::routing::role_for_path) does); and `location /`
//! for the rest, which goes to the client instances. `/sync` is balanced by a
//! consistent hash of the access token, so each device keeps long-polling the
//! same sync instance.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::api::routing::{self, DEFAULT_ROLE, ROUTES};
use crate::roles::Role;
use crate::up::topology::Topology;

/// What the generated `server` block says about itself.
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// nginx's `listen` parameter: a port or `address:port`.
    pub listen: String,
    /// nginx's `server_name`; `_` matches any host.
    pub server_name: String,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            listen: "8080".into(),
            server_name: "_".into(),
        }
    }
}

/// The upstream name of a role's instances.
pub fn upstream(role: Role) -> String {
    format!("lattice_{}", role.name())
}

/// The whole configuration, for nginx's `http` block (`conf.d/`).
pub fn render(topology: &Topology, options: &NginxOptions) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Routes for the Lattice topology {}, written by `lattice routes --nginx`.\n\
         # Regenerate it when the topology changes. It belongs in nginx's http block\n\
         # (for instance as /etc/nginx/conf.d/lattice.conf).",
        topology.path.display()
    );
    for role in routing::http_roles() {
        out.push('\n');
        let _ = writeln!(out, "# {}", describe(role));
        let _ = writeln!(out, "upstream {} {{", upstream(role));
        if role == Role::Sync {
            // Either the header or the deprecated query parameter carries the
            // token; one of the two is empty.
            out.push_str("    hash $http_authorization$arg_access_token consistent;\n");
        }
        for instance in topology.instances_with(role) {
            let _ = writeln!(
                out,
                "    server {};  # {}",
                reachable(instance.listen),
                instance.name
            );
        }
        out.push_str("    keepalive 32;\n}\n");
    }
    let _ = write!(
        out,
        "
server {{
    listen {listen};
    server_name {server_name};

    # Media uploads are the largest bodies.
    client_max_body_size 100m;

    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    # A /sync long-poll holds the request for its `timeout` (often 30 s).
    proxy_read_timeout 120s;
",
        listen = options.listen,
        server_name = options.server_name,
    );
    for route in ROUTES {
        let _ = write!(
            out,
            "\n    location ~ \"{}\" {{\n        proxy_pass http://{};\n    }}\n",
            route.pattern,
            upstream(route.role)
        );
    }
    let _ = write!(
        out,
        "\n    # Everything else: the client instances answer it, or say it is unknown.\n    \
         location / {{\n        proxy_pass http://{};\n    }}\n}}\n",
        upstream(DEFAULT_ROLE)
    );
    out
}

fn describe(role: Role) -> &'static str {
    match role {
        Role::Sync => "/sync, /events and /initialSync, hashed by access token",
        Role::Client => {
            "the rest of the Client-Server API and /.well-known/matrix/{client,support}"
        }
        Role::Media => "the media repository",
        Role::FederationReader => "federation and server keys",
        _ => "instances of this role",
    }
}

/// An address nginx can connect to: an instance listening on every address
/// (`0.0.0.0`) is reached through the loopback one.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port())
        }
        _ => listen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Yaml};
    use figment::Figment;
    use std::path::Path;

    fn split() -> Topology {
        let yaml = "homeserver: ../var/homeserver.yaml
instances:
  - name: main
    roles: [client, sync, typing, to_device, account_data, receipts, presence, device_lists,
            push_rules, pusher, federation_sender, federation_reader, media, background]
    listen: \"0.0.0.0:8008\"
  - { name: events1, roles: [events], listen: \"127.0.0.1:8010\" }
  - { name: sync2, roles: [sync], listen: \"127.0.0.1:8011\" }
";
        Topology::from_figment(
            Figment::new().merge(Yaml::string(yaml)),
            Path::new("config/split.yaml"),
        )
        .expect("a valid topology")
    }

    #[test]
    fn a_split_topology_routes_sync_to_both_sync_instances() {
        let text = render(&split(), &NginxOptions::default());
        for expected in [
            "upstream lattice_sync {\n    hash $http_authorization$arg_access_token consistent;\n    server 127.0.0.1:8008;  # main\n    server 127.0.0.1:8011;  # sync2\n    keepalive 32;\n}",
            "upstream lattice_client {\n    server 127.0.0.1:8008;  # main\n    keepalive 32;\n}",
            "upstream lattice_media {\n    server 127.0.0.1:8008;  # main\n",
            "upstream lattice_federation_reader {\n    server 127.0.0.1:8008;  # main\n",
            "    location ~ \"^/_matrix/client/(r0|v3)/sync$\" {\n        proxy_pass http://lattice_sync;\n    }",
            "    location ~ \"^/_matrix/client/(api/v1|r0|v3)/events$\" {\n        proxy_pass http://lattice_sync;\n    }",
            "    location ~ \"^/_matrix/client/v1/media/\" {\n        proxy_pass http://lattice_media;\n    }",
            "    location ~ \"^/_matrix/federation/\" {\n        proxy_pass http://lattice_federation_reader;\n    }",
            "    location ~ \"^/_matrix/client/\" {\n        proxy_pass http://lattice_client;\n    }",
            "    location / {\n        proxy_pass http://lattice_client;\n    }",
            "    listen 8080;\n    server_name _;",
        ] {
            assert!(text.contains(expected), "missing\n{expected}\nin\n{text}");
        }
        // The events writer serves no HTTP: no upstream names it.
        assert!(!text.contains("8010"), "{text}");
        // The sync location comes before the client catch-all, since nginx
        // takes the first matching regex.
        let sync = text.find("(r0|v3)/sync").expect("sync location");
        let client = text.find("\"^/_matrix/client/\"").expect("client location");
        assert!(sync < client);
        // Braces balance (no `{` of a regex left unquoted).
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn options_set_listen_and_server_name() {
        let text = render(
            &split(),
            &NginxOptions {
                listen: "443 ssl".into(),
                server_name: "matrix.example.org".into(),
            },
        );
        assert!(text.contains("    listen 443 ssl;\n    server_name matrix.example.org;"));
    }
}
