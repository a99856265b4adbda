//! The Client-Server API: one module per area of the spec, each with its
//! handlers. Every route is served under `/v3` and, where clients still use
//! it, the legacy `/r0` prefix.

pub mod account;
pub mod account_data;
pub mod admin;
pub mod backup;
pub mod device;
pub mod directory;
pub mod events;
pub mod filter;
pub mod keys;
pub mod media;
pub mod membership;
pub mod message;
pub mod notifications;
pub mod presence;
pub mod profile;
pub mod push_rules;
pub mod read_markers;
pub mod receipts;
pub mod relations;
pub mod report;
pub mod room;
pub mod search;
pub mod session;
pub mod space;
pub mod state;
pub mod sync;
pub mod timestamp_to_event;
pub mod to_device;
pub mod typing;
pub mod uiaa;
pub mod user_directory;
pub mod versions;
pub mod voip;

use actix_web::{web, HttpRequest, HttpResponse, Resource, Scope};

use crate::error::{ApiError, ApiResult, ErrCode};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Before `/_matrix/client/v1`: a scope that matches a prefix keeps the
    // request even when none of its routes does.
    media::configure(cfg);
    cfg.service(resource("/.well-known/matrix/client").route(web::get().to(versions::well_known)))
        .service(
            resource("/.well-known/matrix/support")
                .route(web::get().to(versions::well_known_support)),
        )
        .service(resource("/_matrix/client/versions").route(web::get().to(versions::versions)))
        .service(routes(web::scope("/_matrix/client/v3")))
        .service(routes(web::scope("/_matrix/client/r0")))
        .service(v1_routes(web::scope("/_matrix/client/v1")));
}

/// A path of the API. Its methods are added with `.route`; any other method
/// is `405 M_UNRECOGNIZED`, as the spec asks of an endpoint used with the
/// wrong method (an unknown path is `404`, answered by the app's default).
fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn method_not_allowed(request: HttpRequest) -> ApiResult<HttpResponse> {
    // CORS preflight requests ask about every path with OPTIONS.
    if request.method() == actix_web::http::Method::OPTIONS {
        return Ok(HttpResponse::Ok().finish());
    }
    Err(ApiError::new(
        ErrCode::MethodNotAllowed,
        format!("{} is not allowed here", request.method()),
    ))
}

fn routes(scope: Scope) -> Scope {
    // Routes are matched in the order given, each by a regex (and matched
    // again for the metrics' endpoint label): the hottest come first.
    scope
        .service(resource("/sync").route(web::get().to(sync::sync)))
        .service(resource("/keys/upload").route(web::post().to(keys::upload_keys)))
        .service(resource("/keys/query").route(web::post().to(keys::query_keys)))
        .service(resource("/keys/claim").route(web::post().to(keys::claim_keys)))
        .service(resource("/keys/changes").route(web::get().to(keys::key_changes)))
        .service(
            resource("/keys/device_signing/upload")
                .route(web::post().to(keys::cross_signing::upload_signing_keys)),
        )
        .service(
            resource("/keys/signatures/upload")
                .route(web::post().to(keys::cross_signing::upload_signatures)),
        )
        .service(
            resource("/rooms/{room_id}/send/{event_type}/{txn_id}")
                .route(web::put().to(message::send_message_event)),
        )
        .service(
            resource("/login")
                .route(web::get().to(account::login_flows))
                .route(web::post().to(account::login)),
        )
        .service(resource("/register").route(web::post().to(account::register)))
        .service(resource("/register/available").route(web::get().to(account::register_available)))
        .service(resource("/account/whoami").route(web::get().to(account::whoami)))
        .service(
            resource("/account/password").route(web::post().to(account::password::change_password)),
        )
        .service(
            resource("/account/deactivate")
                .route(web::post().to(account::deactivate::deactivate_account)),
        )
        .service(
            resource("/account/3pid")
                .route(web::get().to(account::threepid::get_threepids))
                .route(web::post().to(account::threepid::post_threepid)),
        )
        .service(
            resource("/account/3pid/add").route(web::post().to(account::threepid::add_threepid)),
        )
        .service(
            resource("/account/3pid/bind").route(web::post().to(account::threepid::bind_threepid)),
        )
        .service(
            resource("/account/3pid/unbind")
                .route(web::post().to(account::threepid::unbind_threepid)),
        )
        .service(
            resource("/account/3pid/delete")
                .route(web::post().to(account::threepid::delete_threepid)),
        )
        .service(
            resource("/account/3pid/email/requestToken")
                .route(web::post().to(account::threepid::request_email_token)),
        )
        .service(
            resource("/account/3pid/msisdn/requestToken")
                .route(web::post().to(account::threepid::request_msisdn_token)),
        )
        .service(
            resource("/account/password/email/requestToken")
                .route(web::post().to(account::threepid::request_password_email_token)),
        )
        .service(
            resource("/register/email/requestToken")
                .route(web::post().to(account::threepid::request_register_email_token)),
        )
        .service(
            resource("/register/msisdn/requestToken")
                .route(web::post().to(account::threepid::request_register_msisdn_token)),
        )
        .service(resource("/refresh").route(web::post().to(session::refresh)))
        .service(resource("/voip/turnServer").route(web::get().to(voip::turn_server)))
        .service(resource("/logout").route(web::post().to(account::logout)))
        .service(resource("/logout/all").route(web::post().to(account::logout_all)))
        .service(resource("/capabilities").route(web::get().to(versions::capabilities)))
        .service(resource("/profile/{user_id}").route(web::get().to(profile::get_profile)))
        .service(
            resource("/profile/{user_id}/{field}")
                .route(web::get().to(profile::get_profile_field))
                .route(web::put().to(profile::set_profile_field))
                .route(web::delete().to(profile::delete_profile_field)),
        )
        .service(resource("/pushrules/").route(web::get().to(push_rules::get_push_rules)))
        .service(
            resource("/pushrules/global/").route(web::get().to(push_rules::get_global_push_rules)),
        )
        .service(
            resource("/pushrules/global/{kind}/{rule_id}")
                .route(web::get().to(push_rules::get_push_rule))
                .route(web::put().to(push_rules::put_push_rule))
                .route(web::delete().to(push_rules::delete_push_rule)),
        )
        .service(
            resource("/pushrules/global/{kind}/{rule_id}/enabled")
                .route(web::get().to(push_rules::get_push_rule_enabled))
                .route(web::put().to(push_rules::put_push_rule_enabled)),
        )
        .service(
            resource("/pushrules/global/{kind}/{rule_id}/actions")
                .route(web::get().to(push_rules::get_push_rule_actions))
                .route(web::put().to(push_rules::put_push_rule_actions)),
        )
        .service(resource("/user/{user_id}/filter").route(web::post().to(filter::create_filter)))
        .service(
            resource("/user/{user_id}/filter/{filter_id}").route(web::get().to(filter::get_filter)),
        )
        .service(
            resource("/user/{user_id}/account_data/{type}")
                .route(web::get().to(account_data::get_account_data))
                .route(web::put().to(account_data::put_account_data)),
        )
        .service(
            resource("/user/{user_id}/rooms/{room_id}/account_data/{type}")
                .route(web::get().to(account_data::get_room_account_data))
                .route(web::put().to(account_data::put_room_account_data)),
        )
        .service(
            resource("/user/{user_id}/rooms/{room_id}/tags")
                .route(web::get().to(account_data::get_tags)),
        )
        .service(
            resource("/user/{user_id}/rooms/{room_id}/tags/{tag}")
                .route(web::put().to(account_data::put_tag))
                .route(web::delete().to(account_data::delete_tag)),
        )
        .service(
            resource("/sendToDevice/{event_type}/{txn_id}")
                .route(web::put().to(to_device::send_to_device)),
        )
        .service(resource("/createRoom").route(web::post().to(room::create_room)))
        .service(resource("/joined_rooms").route(web::get().to(membership::joined_rooms)))
        .service(
            resource("/join/{room_id_or_alias}")
                .route(web::post().to(membership::join_by_id_or_alias)),
        )
        .service(resource("/knock/{room_id_or_alias}").route(web::post().to(membership::knock)))
        .service(resource("/rooms/{room_id}/join").route(web::post().to(membership::join_room)))
        .service(resource("/rooms/{room_id}/invite").route(web::post().to(membership::invite)))
        .service(resource("/rooms/{room_id}/leave").route(web::post().to(membership::leave)))
        .service(resource("/rooms/{room_id}/kick").route(web::post().to(membership::kick)))
        .service(resource("/rooms/{room_id}/ban").route(web::post().to(membership::ban)))
        .service(resource("/rooms/{room_id}/unban").route(web::post().to(membership::unban)))
        .service(
            resource("/rooms/{room_id}/upgrade").route(web::post().to(room::upgrade::upgrade_room)),
        )
        .service(resource("/rooms/{room_id}/forget").route(web::post().to(membership::forget)))
        .service(
            resource("/rooms/{room_id}/joined_members")
                .route(web::get().to(membership::joined_members)),
        )
        .service(resource("/rooms/{room_id}/members").route(web::get().to(membership::members)))
        .service(resource("/rooms/{room_id}/state").route(web::get().to(state::get_state)))
        .service(
            resource("/rooms/{room_id}/state/{event_type}")
                .route(web::get().to(state::get_state_event_empty_key))
                .route(web::put().to(state::put_state_event_empty_key)),
        )
        .service(
            resource("/rooms/{room_id}/state/{event_type}/{state_key:.*}")
                .route(web::get().to(state::get_state_event))
                .route(web::put().to(state::put_state_event)),
        )
        .service(
            resource("/rooms/{room_id}/redact/{event_id}/{txn_id}")
                .route(web::put().to(message::redact_event)),
        )
        .service(
            resource("/rooms/{room_id}/typing/{user_id}").route(web::put().to(typing::set_typing)),
        )
        .service(
            resource("/presence/{user_id}/status")
                .route(web::get().to(presence::get_presence))
                .route(web::put().to(presence::set_presence)),
        )
        .service(resource("/rooms/{room_id}/messages").route(web::get().to(message::messages)))
        .service(
            resource("/rooms/{room_id}/receipt/{receipt_type}/{event_id}")
                .route(web::post().to(receipts::post_receipt)),
        )
        .service(
            resource("/rooms/{room_id}/read_markers")
                .route(web::post().to(read_markers::set_read_markers)),
        )
        .service(
            resource("/rooms/{room_id}/context/{event_id}").route(web::get().to(message::context)),
        )
        .service(
            resource("/rooms/{room_id}/event/{event_id}").route(web::get().to(message::get_event)),
        )
        .service(resource("/search").route(web::post().to(search::search)))
        .service(resource("/notifications").route(web::get().to(notifications::get_notifications)))
        .service(
            resource("/rooms/{room_id}/report/{event_id}")
                .route(web::post().to(report::report_event)),
        )
        .service(resource("/rooms/{room_id}/report").route(web::post().to(report::report_room)))
        .service(resource("/users/{user_id}/report").route(web::post().to(report::report_user)))
        .service(
            resource("/directory/room/{room_alias}")
                .route(web::get().to(directory::get_alias))
                .route(web::put().to(directory::put_alias))
                .route(web::delete().to(directory::delete_alias)),
        )
        .service(resource("/rooms/{room_id}/aliases").route(web::get().to(directory::room_aliases)))
        .service(
            resource("/directory/list/room/{room_id}")
                .route(web::get().to(directory::get_visibility))
                .route(web::put().to(directory::set_visibility)),
        )
        .service(
            resource("/user_directory/search")
                .route(web::post().to(user_directory::search_user_directory)),
        )
        .service(
            resource("/publicRooms")
                .route(web::get().to(directory::public_rooms))
                .route(web::post().to(directory::search_public_rooms)),
        )
        .service(resource("/devices").route(web::get().to(device::get_devices)))
        .service(resource("/admin/whois/{user_id}").route(web::get().to(admin::whois)))
        .service(
            resource("/devices/{device_id}")
                .route(web::get().to(device::get_device))
                .route(web::put().to(device::update_device))
                .route(web::delete().to(device::delete_device)),
        )
        .service(resource("/delete_devices").route(web::post().to(device::delete_devices)))
        .service(
            resource("/room_keys/version")
                .route(web::get().to(backup::get_current_version))
                .route(web::post().to(backup::create_version)),
        )
        .service(
            resource("/room_keys/version/{version}")
                .route(web::get().to(backup::get_version))
                .route(web::put().to(backup::update_version))
                .route(web::delete().to(backup::delete_version)),
        )
        .service(
            resource("/room_keys/keys")
                .route(web::get().to(backup::get_keys))
                .route(web::put().to(backup::put_keys))
                .route(web::delete().to(backup::delete_keys)),
        )
        .service(
            resource("/room_keys/keys/{room_id}")
                .route(web::get().to(backup::get_room_keys))
                .route(web::put().to(backup::put_room_keys))
                .route(web::delete().to(backup::delete_room_keys)),
        )
        .service(
            resource("/room_keys/keys/{room_id}/{session_id}")
                .route(web::get().to(backup::get_session_key))
                .route(web::put().to(backup::put_session_key))
                .route(web::delete().to(backup::delete_session_key)),
        )
}

/// The endpoints the spec added under `/v1` only.
fn v1_routes(scope: Scope) -> Scope {
    scope
        .service(resource("/login/get_token").route(web::post().to(session::get_login_token)))
        .service(resource("/refresh").route(web::post().to(session::refresh)))
        .service(
            resource("/rooms/{room_id}/relations/{event_id}")
                .route(web::get().to(relations::get_relating_events)),
        )
        .service(
            resource("/rooms/{room_id}/relations/{event_id}/{rel_type}")
                .route(web::get().to(relations::get_relating_events_with_rel_type)),
        )
        .service(
            resource("/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}")
                .route(web::get().to(relations::get_relating_events_with_rel_type_and_event_type)),
        )
        .service(
            resource("/rooms/{room_id}/threads").route(web::get().to(relations::get_thread_roots)),
        )
        .service(resource("/rooms/{room_id}/hierarchy").route(web::get().to(space::get_hierarchy)))
        .service(resource("/mutual_rooms").route(web::get().to(membership::mutual_rooms)))
        .service(
            resource("/room_summary/{room_id_or_alias}")
                .route(web::get().to(room::summary::get_room_summary)),
        )
        .service(
            resource("/register/m.login.registration_token/validity")
                .route(web::get().to(account::registration_token_validity)),
        )
        .service(
            resource("/rooms/{room_id}/timestamp_to_event")
                .route(web::get().to(timestamp_to_event::timestamp_to_event)),
        )
}
