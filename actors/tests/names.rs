//! Every stored or labelled enum has one spelling: the name the store
//! writes, the name a metric label carries and the JSON the API shows are
//! the same, and each parses back to its variant.

use std::fmt::Debug;
use std::str::FromStr;

use admedia_actors::domain::account::AccountStatus;
use admedia_actors::domain::job::{Charge, JobKind};
use admedia_actors::domain::ledger::GrantSource;
use serde::Serialize;
use strum::VariantArray;

fn one_spelling<T>(name: fn(T) -> &'static str)
where
    T: VariantArray + Copy + Serialize + FromStr + PartialEq + Debug,
    <T as FromStr>::Err: Debug,
{
    for &v in T::VARIANTS {
        let n = name(v);
        assert_eq!(serde_json::to_value(v).unwrap(), serde_json::json!(n));
        assert_eq!(n.parse::<T>().unwrap(), v);
    }
    assert!("".parse::<T>().is_err());
    assert!("Nonsense".parse::<T>().is_err());
}

#[test]
fn stored_names_match_the_api_and_parse_back() {
    one_spelling(AccountStatus::as_str);
    one_spelling(Charge::as_str);
    one_spelling(JobKind::as_str);
    one_spelling(GrantSource::as_str);
}
