//! The command table: every command the data port knows, with its arity, flags and key
//! positions as Redis 7.2 describes them. `COMMAND`, `COMMAND INFO|DOCS|COUNT|LIST` answer from
//! it, and `MULTI` checks a queued command against it (an unknown command or a wrong argument
//! count aborts the transaction at `EXEC`, as in Redis; other errors show at `EXEC` time).
//!
//! Arity as Redis counts it: the command name included; negative `-N` means "at least N".

/// One command of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandSpec {
    /// Lowercase, as `COMMAND` lists it.
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    /// Redis's command group (`string`, `hash`, `generic`, `transactions`, `connection`, `server`).
    pub group: &'static str,
    pub summary: &'static str,
}

const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "denyoom", "fast"];
const WD: &[&str] = &["write"];
const WDF: &[&str] = &["write", "fast"];
const R: &[&str] = &["readonly"];
const RF: &[&str] = &["readonly", "fast"];
const F: &[&str] = &["fast"];
const TX: &[&str] = &["noscript", "loading", "stale", "fast", "allow_busy"];
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const SRV: &[&str] = &["loading", "stale"];

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, summary }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const KEY1: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);

/// Every command, in alphabetical order.
pub const COMMANDS: &[CommandSpec] = &[
    spec(
        "append",
        3,
        WF,
        KEY1,
        "string",
        "Appends a string to the value of a key. Creates the key if it doesn't exist.",
    ),
    spec("client", -2, &[], NO_KEYS, "connection", "A container for client connection commands."),
    spec("command", -1, SRV, NO_KEYS, "server", "Returns detailed information about all commands."),
    spec("config", -2, &[], NO_KEYS, "server", "A container for server configuration commands (hotpair: GET only)."),
    spec("dbsize", 1, RF, NO_KEYS, "server", "Returns the number of keys in the database."),
    spec("decr", 2, WF, KEY1, "string", "Decrements the integer value of a key by one."),
    spec("decrby", 3, WF, KEY1, "string", "Decrements a number from the integer value of a key."),
    spec("del", -2, WD, ALL_KEYS, "generic", "Deletes one or more keys."),
    spec("discard", 1, TX, NO_KEYS, "transactions", "Discards a transaction."),
    spec("echo", 2, F, NO_KEYS, "connection", "Returns the given string."),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        NO_KEYS,
        "transactions",
        "Executes all commands in a transaction.",
    ),
    spec("exists", -2, RF, ALL_KEYS, "generic", "Determines whether one or more keys exist."),
    spec("expire", -3, WDF, KEY1, "generic", "Sets the expiration time of a key in seconds."),
    spec("expireat", -3, WDF, KEY1, "generic", "Sets the expiration time of a key to a Unix timestamp."),
    spec("expiretime", 2, RF, KEY1, "generic", "Returns the expiration time of a key as a Unix timestamp."),
    spec("flushall", -1, WD, NO_KEYS, "server", "Removes all keys from all databases."),
    spec("flushdb", -1, WD, NO_KEYS, "server", "Removes all keys from the current database."),
    spec("get", 2, RF, KEY1, "string", "Returns the string value of a key."),
    spec("getdel", 2, WDF, KEY1, "string", "Returns the string value of a key after deleting the key."),
    spec("getex", -2, WDF, KEY1, "string", "Returns the string value of a key after setting its expiration time."),
    spec(
        "getset",
        3,
        WF,
        KEY1,
        "string",
        "Returns the previous string value of a key after setting it to a new value.",
    ),
    spec("hdel", -3, WDF, KEY1, "hash", "Deletes one or more fields and their values from a hash."),
    spec("hello", -1, CONN, NO_KEYS, "connection", "Handshakes with the server (protocol 2 or 3)."),
    spec("hexists", 3, RF, KEY1, "hash", "Determines whether a field exists in a hash."),
    spec("hget", 3, RF, KEY1, "hash", "Returns the value of a field in a hash."),
    spec("hgetall", 2, R, KEY1, "hash", "Returns all fields and values in a hash."),
    spec("hincrby", 4, WF, KEY1, "hash", "Increments the integer value of a field in a hash by a number."),
    spec("hincrbyfloat", 4, WF, KEY1, "hash", "Increments the floating point value of a field by a number."),
    spec("hkeys", 2, R, KEY1, "hash", "Returns all fields in a hash."),
    spec("hlen", 2, RF, KEY1, "hash", "Returns the number of fields in a hash."),
    spec("hmget", -3, RF, KEY1, "hash", "Returns the values of all fields in a hash."),
    spec("hmset", -4, WF, KEY1, "hash", "Sets the values of multiple fields."),
    spec("hscan", -3, R, KEY1, "hash", "Iterates over fields and values of a hash."),
    spec("hset", -4, WF, KEY1, "hash", "Creates or modifies the value of a field in a hash."),
    spec("hsetnx", 4, WF, KEY1, "hash", "Sets the value of a field in a hash only when the field doesn't exist."),
    spec("hstrlen", 3, RF, KEY1, "hash", "Returns the length of the value of a field."),
    spec("hvals", 2, R, KEY1, "hash", "Returns all values in a hash."),
    spec("incr", 2, WF, KEY1, "string", "Increments the integer value of a key by one."),
    spec("incrby", 3, WF, KEY1, "string", "Increments the integer value of a key by a number."),
    spec("incrbyfloat", 3, WF, KEY1, "string", "Increment the floating point value of a key by a number."),
    spec("info", -1, SRV, NO_KEYS, "server", "Returns information and statistics about the server."),
    spec("keys", 2, R, NO_KEYS, "generic", "Returns all key names that match a pattern."),
    spec("mget", -2, RF, ALL_KEYS, "string", "Atomically returns the string values of one or more keys."),
    spec("mset", -3, W, (1, -1, 2), "string", "Atomically creates or modifies the string values of one or more keys."),
    spec("msetnx", -3, W, (1, -1, 2), "string", "Sets the string values of keys only when none of them exist."),
    spec("multi", 1, TX, NO_KEYS, "transactions", "Starts a transaction."),
    spec("persist", 2, WDF, KEY1, "generic", "Removes the expiration time of a key."),
    spec("pexpire", -3, WDF, KEY1, "generic", "Sets the expiration time of a key in milliseconds."),
    spec("pexpireat", -3, WDF, KEY1, "generic", "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec(
        "pexpiretime",
        2,
        RF,
        KEY1,
        "generic",
        "Returns the expiration time of a key as a Unix milliseconds timestamp.",
    ),
    spec("ping", -1, F, NO_KEYS, "connection", "Returns the server's liveliness response."),
    spec("psetex", 4, W, KEY1, "string", "Sets the value and expiration in milliseconds of a key."),
    spec("pttl", 2, RF, KEY1, "generic", "Returns the expiration time in milliseconds of a key."),
    spec("quit", -1, CONN, NO_KEYS, "connection", "Closes the connection."),
    spec("randomkey", 1, R, NO_KEYS, "generic", "Returns a random key name from the database."),
    spec("rename", 3, WD, (1, 2, 1), "generic", "Renames a key and overwrites the destination."),
    spec("renamenx", 3, WDF, (1, 2, 1), "generic", "Renames a key only when the target key name doesn't exist."),
    spec("role", 1, CONN, NO_KEYS, "server", "Returns the replication role."),
    spec("scan", -2, R, NO_KEYS, "generic", "Iterates over the key names in the database."),
    spec("select", 2, CONN, NO_KEYS, "connection", "Changes the selected database (hotpair: 0 only)."),
    spec("set", -3, W, KEY1, "string", "Sets the string value of a key, ignoring its type."),
    spec("setex", 4, W, KEY1, "string", "Sets the string value and expiration time of a key."),
    spec("setnx", 3, WF, KEY1, "string", "Set the string value of a key only when the key doesn't exist."),
    spec("strlen", 2, RF, KEY1, "string", "Returns the length of a string value."),
    spec("touch", -2, RF, ALL_KEYS, "generic", "Returns the number of existing keys out of those specified."),
    spec("ttl", 2, RF, KEY1, "generic", "Returns the expiration time in seconds of a key."),
    spec("type", 2, RF, KEY1, "generic", "Determines the type of value stored at a key."),
    spec("unlink", -2, WDF, ALL_KEYS, "generic", "Asynchronously deletes one or more keys."),
    spec("unwatch", 1, TX, NO_KEYS, "transactions", "Forgets about watched keys of a transaction."),
    spec("wait", 3, &[], NO_KEYS, "generic", "Blocks until the replica has everything this node committed."),
    spec(
        "watch",
        -2,
        TX,
        ALL_KEYS,
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
];

/// The table entry of `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    let lower = name.to_ascii_lowercase();
    COMMANDS.binary_search_by(|spec| spec.name.as_bytes().cmp(&lower)).ok().map(|index| &COMMANDS[index])
}

impl CommandSpec {
    /// Whether `argc` arguments (the name included) fit the arity.
    pub fn arity_fits(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_lookups_ignore_case() {
        assert!(COMMANDS.windows(2).all(|pair| pair[0].name < pair[1].name), "COMMANDS must stay sorted");
        assert_eq!(lookup(b"HsEt").map(|spec| spec.arity), Some(-4));
        assert!(lookup(b"lpush").is_none());
        assert!(lookup(b"set").unwrap().arity_fits(3) && !lookup(b"set").unwrap().arity_fits(2));
        assert!(lookup(b"get").unwrap().arity_fits(2) && !lookup(b"get").unwrap().arity_fits(3));
    }
}
