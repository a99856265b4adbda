//! Push rules and what they make of new events (issue 13).
//!
//! [`rules`]: a user's ruleset is ruma's server defaults with the user's
//! changes applied (their own rules, placed as the client asked, and their
//! changes to the defaults' `enabled` and `actions`), stored per user by the
//! `push_rules` writers and cached on every instance that evaluates or
//! serves them.
//!
//! [`evaluator`]: each new event is evaluated against the ruleset of every
//! local member of its room but its sender, on the instance where the
//! request entered the server, before it goes to the event persister (as
//! Synapse's `BulkPushRuleEvaluator` does before persisting): the persister
//! only stores the resulting actions with the event, in its transaction
//! (`storage::push_actions`). `/sync` counts them (`sync::notifications`);
//! pushers will send them.

pub mod evaluator;
pub mod recent;
pub mod rules;
