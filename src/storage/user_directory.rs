//! The user directory in PostgreSQL (migration 0013): the normalized words
//! each user is found by ([`words`]: NFKD, combining marks dropped,
//! lowercase, split on what is not a letter or digit), kept by
//! [`set_terms`] whenever a user is created or changes display name, and
//! the search over them ([`search`]), which reads who may see whom from the
//! rooms' current state: users who share a joined room with the searcher,
//! or are joined to a room whose join rule is `public` or whose history is
//! `world_readable` (the spec's minimum, Synapse's default).

use deadpool_postgres::{GenericClient, Pool};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::StorageResult;

/// A user found by a search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryUser {
    pub user_id: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

/// The words of `text` as the directory compares them: decomposed (NFKD),
/// without combining marks (accents), lowercase, split on every character
/// that is not alphanumeric; in order, each once.
pub fn words(text: &str) -> Vec<String> {
    let folded: String = text
        .nfkd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    let mut words: Vec<String> = Vec::new();
    for word in folded.split(|c: char| !c.is_alphanumeric()) {
        if !word.is_empty() && !words.iter().any(|w| w == word) {
            words.push(word.to_owned());
        }
    }
    words
}

/// Sets the words `user_id` is found by: those of their display name and
/// of their user id. One statement, so a reader sees the old words or the
/// new ones.
pub async fn set_terms(
    client: &impl GenericClient,
    user_id: &str,
    display_name: Option<&str>,
) -> StorageResult<()> {
    let mut terms = words(display_name.unwrap_or_default());
    for word in words(user_id) {
        if !terms.contains(&word) {
            terms.push(word);
        }
    }
    let statement = client
        .prepare_cached(
            "WITH old AS (DELETE FROM user_directory_terms WHERE user_id = $1)
             INSERT INTO user_directory_terms (user_id, term)
             SELECT $1, term FROM unnest($2::TEXT[]) AS term",
        )
        .await?;
    client.execute(&statement, &[&user_id, &terms]).await?;
    Ok(())
}

/// Past every string that starts with a prefix, in byte order: a prefix
/// followed by the largest character.
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}{}", char::MAX)
}

/// The users `searcher` may see whose words start with each of
/// `prefixes` (normalized by [`words`]; a user matches when every prefix
/// starts one of their words), at most `limit`, those with a display name
/// and avatar first, then by display name and id.
pub async fn search(
    pool: &Pool,
    searcher: &str,
    prefixes: &[String],
    limit: i64,
) -> StorageResult<Vec<DirectoryUser>> {
    if prefixes.is_empty() || limit <= 0 {
        return Ok(Vec::new());
    }
    let ends: Vec<String> = prefixes.iter().map(|p| prefix_end(p)).collect();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "WITH matched AS (
                 SELECT t.user_id
                 FROM unnest($1::TEXT[], $2::TEXT[]) AS p(low, high)
                 JOIN user_directory_terms t ON t.term ~>=~ p.low AND t.term ~<~ p.high
                 GROUP BY t.user_id
                 HAVING count(DISTINCT p.low) = cardinality($1::TEXT[])
             )
             SELECT u.user_id, u.displayname, u.avatar_url
             FROM matched m JOIN users u ON u.user_id = m.user_id
             WHERE NOT u.deactivated AND EXISTS (
                 SELECT 1 FROM current_state theirs
                 WHERE theirs.type = 'm.room.member' AND theirs.state_key = u.user_id
                   AND theirs.membership = 'join'
                   AND (
                     EXISTS (
                         SELECT 1 FROM current_state mine
                         WHERE mine.room_id = theirs.room_id AND mine.type = 'm.room.member'
                           AND mine.state_key = $3 AND mine.membership = 'join'
                     )
                     OR EXISTS (
                         SELECT 1 FROM current_state rule JOIN events e ON e.event_id = rule.event_id
                         WHERE rule.room_id = theirs.room_id AND rule.type = 'm.room.join_rules'
                           AND rule.state_key = '' AND e.pdu -> 'content' ->> 'join_rule' = 'public'
                     )
                     OR EXISTS (
                         SELECT 1 FROM current_state rule JOIN events e ON e.event_id = rule.event_id
                         WHERE rule.room_id = theirs.room_id
                           AND rule.type = 'm.room.history_visibility' AND rule.state_key = ''
                           AND e.pdu -> 'content' ->> 'history_visibility' = 'world_readable'
                     )
                   )
             )
             ORDER BY u.displayname IS NULL, u.avatar_url IS NULL, lower(u.displayname), u.user_id
             LIMIT $4",
        )
        .await?;
    let rows = client
        .query(&statement, &[&prefixes, &ends, &searcher, &limit])
        .await?;
    Ok(rows
        .iter()
        .map(|row| DirectoryUser {
            user_id: row.get(0),
            display_name: row.get(1),
            avatar_url: row.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_folded_for_case_and_accents_and_split() {
        assert_eq!(
            words("Zoë  Ångström-Éclair"),
            vec!["zoe", "angstrom", "eclair"]
        );
        assert_eq!(
            words("@alice_b:example.org"),
            vec!["alice", "b", "example", "org"]
        );
        // Compatibility forms fold too (full-width letters, ligatures).
        assert_eq!(words("ＡＢＣ ﬁle"), vec!["abc", "file"]);
        assert_eq!(words("Ωmega ωmega"), vec!["ωmega"]);
        assert!(words("  -- @:").is_empty());
    }

    #[test]
    fn a_prefix_ends_after_every_word_it_starts() {
        let end = prefix_end("ali");
        for word in ["ali", "alice", "ali\u{10FFFE}", "aliz"] {
            assert!(word < end.as_str(), "{word}");
        }
        assert!("alj" > end.as_str());
    }
}
