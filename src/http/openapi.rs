//! The OpenAPI 3 document, generated from the handlers and types, so it
//! cannot disagree with the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{admin, jobs, operators, ops, problem, users, views, wallet};
use crate::http::{keys, payments, pricing};

#[derive(OpenApi)]
#[openapi(
    info(title = "AdMedia orchestrator", description = "Credits, fair scheduling and GPU workers for AI generation jobs."),
    paths(
        users::register, users::me, users::webhook_secret,
        wallet::wallet, wallet::ledger,
        jobs::submit, jobs::get, jobs::list, jobs::cancel,
        admin::grant, admin::membership, admin::suspend, admin::reinstate, admin::user_moderation, admin::suspensions, admin::stats,
        operators::jobs, operators::job, operators::cancel, operators::users, operators::user,
        operators::workers, operators::drain,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
        keys::issue, keys::list, keys::revoke, keys::close, keys::terminate,
        payments::webhook, pricing::get, pricing::announce,
    ),
    components(schemas(
        problem::Problem,
        views::UserView, views::WalletView, views::LedgerEntryView, views::JobView,
        users::RegisterRequest, users::Registered, users::Me, users::WebhookSecret,
        wallet::LedgerPage, jobs::JobsPage,
        operators::AdminJobView, operators::AdminJobsPage, operators::AttemptView, operators::JobDetailView,
        operators::UsersPage, operators::UserDetailView, operators::WorkerInfo, operators::WorkersPage,
        admin::GrantRequest, admin::MembershipRequest, admin::StatsView, admin::WorkerStats, admin::LastHour, admin::NodeView,
        ops::Health,
        keys::ApiKeyView, keys::IssuedKeyView, keys::ApiKeysPage, keys::CloseRequest, keys::Closed,
        payments::PaymentEvent, payments::ProductDoc, payments::PaymentApplied,
        pricing::Prices, pricing::PriceVersionView, pricing::Pricing, pricing::AnnounceRequest,
        users::MembershipView, users::GiftView,
    )),
    modifiers(&Security),
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer =
            || SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        components.add_security_scheme("api_key", bearer());
        components.add_security_scheme("admin_token", bearer());
    }
}
