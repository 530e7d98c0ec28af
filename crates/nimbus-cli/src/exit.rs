//! Process exit codes of the client commands: the one place they are defined.
//!
//! `docs/cli.md` documents the same table; `Exit::ALL` keeps the two easy to compare.

/// Why a client command ended; [`Exit::code`] gives the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// 0: the command did what was asked.
    Success,
    /// 1: bad usage, bad input, a configuration problem, or a request the server rejected (400, 413, ...).
    Failure,
    /// 2: the entity or activation does not exist (HTTP 404).
    NotFound,
    /// 3: the entity already exists or was changed concurrently (HTTP 409).
    Conflict,
    /// 4: the key was missing, wrong, or not allowed (HTTP 401 or 403).
    Unauthorized,
    /// 5: the action ran and failed (HTTP 502: application or developer error).
    ActionFailed,
    /// 6: the server accepted a blocking call but it had not finished in time (HTTP 202).
    NotFinished,
    /// 7: throttled (HTTP 429).
    Throttled,
    /// 8: any other server error (5xx, 408), or the server could not be reached.
    ServerError,
}

impl Exit {
    /// Every exit, in code order.
    pub const ALL: [Exit; 9] = [
        Exit::Success,
        Exit::Failure,
        Exit::NotFound,
        Exit::Conflict,
        Exit::Unauthorized,
        Exit::ActionFailed,
        Exit::NotFinished,
        Exit::Throttled,
        Exit::ServerError,
    ];

    /// The process exit code.
    pub const fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::NotFound => 2,
            Exit::Conflict => 3,
            Exit::Unauthorized => 4,
            Exit::ActionFailed => 5,
            Exit::NotFinished => 6,
            Exit::Throttled => 7,
            Exit::ServerError => 8,
        }
    }

    /// A short description, as in the documentation table.
    pub const fn description(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::Failure => {
                "usage, input or configuration error; request rejected (400, 413, other 4xx)"
            }
            Exit::NotFound => "not found (404)",
            Exit::Conflict => "conflict: already exists or concurrent change (409)",
            Exit::Unauthorized => "authentication or authorization failed (401, 403)",
            Exit::ActionFailed => {
                "the action ran and failed (502); the activation or result is still printed"
            }
            Exit::NotFinished => {
                "accepted but not finished within the blocking wait (202 on a blocking call)"
            }
            Exit::Throttled => "throttled (429)",
            Exit::ServerError => {
                "other server error (5xx, 408) or the apihost could not be reached"
            }
        }
    }

    /// The exit for an HTTP error status (anything below 400 counts as success).
    pub const fn from_http_status(status: u16) -> Exit {
        match status {
            0..=399 => Exit::Success,
            401 | 403 => Exit::Unauthorized,
            404 => Exit::NotFound,
            408 => Exit::ServerError,
            409 => Exit::Conflict,
            429 => Exit::Throttled,
            502 => Exit::ActionFailed,
            400..=499 => Exit::Failure,
            _ => Exit::ServerError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, exit) in Exit::ALL.iter().enumerate() {
            assert_eq!(exit.code(), i as i32);
        }
    }

    #[test]
    fn http_status_mapping() {
        assert_eq!(Exit::from_http_status(200), Exit::Success);
        assert_eq!(Exit::from_http_status(202), Exit::Success);
        assert_eq!(Exit::from_http_status(400), Exit::Failure);
        assert_eq!(Exit::from_http_status(401), Exit::Unauthorized);
        assert_eq!(Exit::from_http_status(403), Exit::Unauthorized);
        assert_eq!(Exit::from_http_status(404), Exit::NotFound);
        assert_eq!(Exit::from_http_status(408), Exit::ServerError);
        assert_eq!(Exit::from_http_status(409), Exit::Conflict);
        assert_eq!(Exit::from_http_status(413), Exit::Failure);
        assert_eq!(Exit::from_http_status(429), Exit::Throttled);
        assert_eq!(Exit::from_http_status(500), Exit::ServerError);
        assert_eq!(Exit::from_http_status(502), Exit::ActionFailed);
        assert_eq!(Exit::from_http_status(503), Exit::ServerError);
    }
}
