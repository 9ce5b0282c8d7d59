//! Ids: short, URL-safe, random strings with a kind prefix so a log line shows what an id is.

use rand::Rng;

const ALPHABET: &[u8] = b"23456789abcdefghijkmnpqrstuvwxyz";

fn random_id(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    for _ in 0..len {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// A new room id such as `r-7kq2m9x4ta` (50 bits of randomness).
pub fn new_room_id() -> String {
    random_id("r-", 10)
}

/// A new session-server id such as `s-k3p9az`.
pub fn new_server_id() -> String {
    random_id("s-", 6)
}

/// A new user id such as `u-9c2kx7qd4m`.
pub fn new_user_id() -> String {
    random_id("u-", 10)
}

/// User ids live in namespaces told apart by their prefix, so that one kind can never take the
/// id of another: an account's id is random (`a-…`), a guest's is its name (`g-<name in lower
/// case>`), and a user of an outside identity provider gets `x-<hash of issuer and subject>`.
pub const ACCOUNT_ID_PREFIX: &str = "a-";
/// See [`ACCOUNT_ID_PREFIX`].
pub const GUEST_ID_PREFIX: &str = "g-";
/// See [`ACCOUNT_ID_PREFIX`].
pub const EXTERNAL_ID_PREFIX: &str = "x-";

/// A new account id such as `a-9c2kx7qd4m7w` (60 bits of randomness).
pub fn new_account_id() -> String {
    random_id(ACCOUNT_ID_PREFIX, 12)
}

/// The user id of the guest `name` (names compare case-insensitively, so `Bob` and `bob` are
/// one guest).
pub fn guest_user_id(name: &str) -> String {
    format!("{GUEST_ID_PREFIX}{}", username_key(name))
}

/// The form a username is compared in: ASCII lower case (usernames are ASCII).
pub fn username_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Whether `id` is an acceptable room id: 1–64 of ASCII letters, digits, `-` and `_`.
/// Ids come from URLs, so everything else is refused before it reaches a map or a log.
pub fn is_valid_room_id(id: &str) -> bool {
    is_valid_token_id(id, 64)
}

/// Whether `id` is an acceptable server id (same alphabet as room ids, at most 64 long).
pub fn is_valid_server_id(id: &str) -> bool {
    is_valid_token_id(id, 64)
}

fn is_valid_token_id(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `name` is an acceptable username: 1–32 of letters, digits, `_` and `-`.
pub fn is_valid_username(name: &str) -> bool {
    is_valid_token_id(name, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let a = new_room_id();
        let b = new_room_id();
        assert!(is_valid_room_id(&a) && a.starts_with("r-") && a.len() == 12);
        assert_ne!(a, b);
        assert!(is_valid_server_id(&new_server_id()));
    }

    #[test]
    fn user_id_namespaces_never_meet() {
        assert_eq!(guest_user_id("Bob"), "g-bob");
        let account = new_account_id();
        assert!(account.starts_with(ACCOUNT_ID_PREFIX) && account.len() == 14);
        assert_ne!(guest_user_id(&account), account);
    }

    #[test]
    fn usernames() {
        assert!(is_valid_username("alice_01-x"));
        assert!(!is_valid_username(""));
        assert!(!is_valid_username("a b"));
        assert!(!is_valid_username("<script>"));
        assert!(!is_valid_username(&"a".repeat(33)));
        assert!(is_valid_username(&"a".repeat(32)));
        assert!(!is_valid_username("élodie"));
    }
}
