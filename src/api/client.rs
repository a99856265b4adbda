//! The Client-Server API: one module per area of the spec, each with its
//! handlers. Every route is served under `/v3` and, where clients still use
//! it, the legacy `/r0` prefix.

pub mod account;
pub mod directory;
pub mod events;
pub mod filter;
pub mod membership;
pub mod message;
pub mod profile;
pub mod room;
pub mod state;
pub mod sync;
pub mod versions;

use actix_web::{web, Scope};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/.well-known/matrix/client",
        web::get().to(versions::well_known),
    )
    .route(
        "/_matrix/client/versions",
        web::get().to(versions::versions),
    )
    .service(routes(web::scope("/_matrix/client/v3")))
    .service(routes(web::scope("/_matrix/client/r0")));
}

fn routes(scope: Scope) -> Scope {
    scope
        .route("/login", web::get().to(account::login_flows))
        .route("/login", web::post().to(account::login))
        .route("/register", web::post().to(account::register))
        .route(
            "/register/available",
            web::get().to(account::register_available),
        )
        .route("/account/whoami", web::get().to(account::whoami))
        .route("/logout", web::post().to(account::logout))
        .route("/logout/all", web::post().to(account::logout_all))
        .route("/capabilities", web::get().to(versions::capabilities))
        .route("/profile/{user_id}", web::get().to(profile::get_profile))
        .route(
            "/profile/{user_id}/{field}",
            web::get().to(profile::get_profile_field),
        )
        .route(
            "/profile/{user_id}/{field}",
            web::put().to(profile::set_profile_field),
        )
        .route(
            "/user/{user_id}/filter",
            web::post().to(filter::create_filter),
        )
        .route(
            "/user/{user_id}/filter/{filter_id}",
            web::get().to(filter::get_filter),
        )
        .route("/createRoom", web::post().to(room::create_room))
        .route("/joined_rooms", web::get().to(membership::joined_rooms))
        .route(
            "/join/{room_id_or_alias}",
            web::post().to(membership::join_by_id_or_alias),
        )
        .route(
            "/rooms/{room_id}/join",
            web::post().to(membership::join_room),
        )
        .route(
            "/rooms/{room_id}/invite",
            web::post().to(membership::invite),
        )
        .route("/rooms/{room_id}/leave", web::post().to(membership::leave))
        .route("/rooms/{room_id}/kick", web::post().to(membership::kick))
        .route("/rooms/{room_id}/ban", web::post().to(membership::ban))
        .route("/rooms/{room_id}/unban", web::post().to(membership::unban))
        .route(
            "/rooms/{room_id}/forget",
            web::post().to(membership::forget),
        )
        .route(
            "/rooms/{room_id}/joined_members",
            web::get().to(membership::joined_members),
        )
        .route(
            "/rooms/{room_id}/members",
            web::get().to(membership::members),
        )
        .route("/rooms/{room_id}/state", web::get().to(state::get_state))
        .route(
            "/rooms/{room_id}/state/{event_type}",
            web::get().to(state::get_state_event_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key:.*}",
            web::get().to(state::get_state_event),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}",
            web::put().to(state::put_state_event_empty_key),
        )
        .route(
            "/rooms/{room_id}/state/{event_type}/{state_key:.*}",
            web::put().to(state::put_state_event),
        )
        .route(
            "/rooms/{room_id}/send/{event_type}/{txn_id}",
            web::put().to(message::send_message_event),
        )
        .route(
            "/rooms/{room_id}/redact/{event_id}/{txn_id}",
            web::put().to(message::redact_event),
        )
        .route(
            "/rooms/{room_id}/messages",
            web::get().to(message::messages),
        )
        .route(
            "/rooms/{room_id}/context/{event_id}",
            web::get().to(message::context),
        )
        .route(
            "/rooms/{room_id}/event/{event_id}",
            web::get().to(message::get_event),
        )
        .route("/sync", web::get().to(sync::sync))
        .route(
            "/directory/room/{room_alias}",
            web::get().to(directory::get_alias),
        )
        .route(
            "/directory/room/{room_alias}",
            web::put().to(directory::put_alias),
        )
        .route(
            "/directory/room/{room_alias}",
            web::delete().to(directory::delete_alias),
        )
        .route(
            "/rooms/{room_id}/aliases",
            web::get().to(directory::room_aliases),
        )
        .route(
            "/directory/list/room/{room_id}",
            web::get().to(directory::get_visibility),
        )
        .route(
            "/directory/list/room/{room_id}",
            web::put().to(directory::set_visibility),
        )
        .route("/publicRooms", web::get().to(directory::public_rooms))
        .route(
            "/publicRooms",
            web::post().to(directory::search_public_rooms),
        )
}
