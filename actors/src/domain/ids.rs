//! Identifiers. Each kind of id is its own type so a job id can never be
//! passed where a user id is expected. On the wire they are opaque strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new id; UUIDv7, so ids sort by creation time.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A platform user (one per e-mail address, ToS 2.4).
    UserId
);
uuid_id!(
    /// A generation job. The job's hold is keyed by this id.
    JobId
);
uuid_id!(
    /// One connection of a GPU worker (a reconnect is a new worker).
    WorkerId
);
uuid_id!(
    /// A fencing token for one attempt of one job: every message about the
    /// attempt carries it, and one from an older attempt is ignored.
    LeaseToken
);
uuid_id!(
    /// A stored API key, so a user can list and revoke keys.
    ApiKeyId
);
uuid_id!(
    /// An account-level webhook endpoint (`/v1/me/webhooks`).
    WebhookEndpointId
);
uuid_id!(
    /// A file a user uploaded (ToS 6.4), e.g. the init image of a job.
    MaterialId
);

/// A ledger entry's id: a store-wide sequence, so entries sort by id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct EntryId(pub i64);

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for EntryId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(EntryId)
    }
}

impl From<EntryId> for String {
    fn from(id: EntryId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for EntryId {
    type Error = std::num::ParseIntError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
