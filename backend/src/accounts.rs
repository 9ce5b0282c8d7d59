//! Accounts and identity: who a user token names, and the calls that mint them.
//!
//! Three kinds of user, each in an id namespace of its own (`berth_protocol::ids`):
//! - accounts (`a-…`): registered with a password, kept in the store, names unique
//!   case-insensitively and shown in the case they were registered with;
//! - guests (`g-<name>`): a name no account holds, without a password, when `--guests` is on;
//! - users of an outside identity provider (`x-…`, [`crate::jwks`]).
//!
//! Every use of a user token ([`authenticate`]) checks it again against the store: an account
//! token must carry the account's current token generation (changing the password moves it on,
//! so older tokens stop working), and a guest token stops working when guests are turned off or
//! its name becomes an account's. Password checks go through [`crate::throttle`].

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use berth_protocol::api::{
    ChangePasswordRequest, LoginRequest, LoginResponse, MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS,
    MeResponse, RegisterRequest,
};
use berth_protocol::claims::UserClaims;
use berth_protocol::{ErrorBody, ErrorCode, ids};
use berth_runtime::http::Json as JsonBody;
use berth_store::{Account, Store, StoreError};

use crate::api::AuthUser;
use crate::error::ApiError;
use crate::jwks::{JwksArgs, JwksConfigError, JwksVerifier};
use crate::password::{self, Argon2Args, PasswordError, Passwords};
use crate::ratelimit::ClientAddr;
use crate::state::AppState;
use crate::throttle::{LoginThrottle, ThrottleArgs};
use crate::tokens;

/// Flags of accounts, guests, password hashing, login throttling and outside identities.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct AccountArgs {
    /// Guests may sign in with a name and no password (any name no account holds).
    #[arg(
        long,
        env = "BERTH_GUESTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub guests: bool,

    #[command(flatten)]
    pub argon2: Argon2Args,

    #[command(flatten)]
    pub throttle: ThrottleArgs,

    #[command(flatten)]
    pub jwks: JwksArgs,
}

/// Why the account machinery could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("password hashing: {0}")]
    Passwords(#[from] PasswordError),
    #[error("identity provider: {0}")]
    Jwks(#[from] JwksConfigError),
}

/// What the account calls share.
#[derive(Debug)]
pub struct Accounts {
    guests: bool,
    passwords: Passwords,
    throttle: LoginThrottle,
    jwks: Option<JwksVerifier>,
}

impl Accounts {
    /// Checks the flags and makes the dummy hash (one argon2 hash: call it at start).
    pub fn new(args: &AccountArgs) -> Result<Accounts, AccountsError> {
        Ok(Accounts {
            guests: args.guests,
            passwords: Passwords::new(&args.argon2)?,
            throttle: LoginThrottle::new(&args.throttle),
            jwks: JwksVerifier::from_args(&args.jwks)?,
        })
    }

    /// The outside identity provider's verifier, when one is configured.
    pub fn jwks(&self) -> Option<&JwksVerifier> {
        self.jwks.as_ref()
    }
}

/// Who `token` names, checked as every call that takes a user token needs: Berth's own token
/// (signature, `exp`, `aud`, then the account's token generation or the guest rules), else,
/// when configured, a token of the outside identity provider.
pub async fn authenticate(state: &AppState, token: &str) -> Result<UserClaims, ApiError> {
    let claims = match state.issuer().verify_user_token(token) {
        Ok(claims) => claims,
        Err(own) => {
            return match state.accounts().jwks() {
                Some(jwks) => jwks.verify(token).await.map_err(|e| {
                    ApiError::unauthorized("invalid or expired user token").with_cause(e)
                }),
                None => {
                    Err(ApiError::unauthorized("invalid or expired user token").with_cause(own))
                }
            };
        }
    };
    let refused = |why: &'static str| ApiError::unauthorized(why);
    if claims.sub.starts_with(ids::ACCOUNT_ID_PREFIX) && !claims.guest {
        let store = store(state)?;
        let account = store
            .account_by_id(&claims.sub)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| refused("this account no longer exists"))?;
        if account.token_gen != claims.token_gen {
            return Err(refused(
                "this token was issued before the password changed: sign in again",
            ));
        }
        // The name as the account holds it, whatever the token says.
        Ok(UserClaims {
            name: account.username,
            ..claims
        })
    } else if claims.sub.starts_with(ids::GUEST_ID_PREFIX) && claims.guest {
        if !state.accounts().guests {
            return Err(refused("guests are disabled: sign in with an account"));
        }
        if let Some(store) = state.store()
            && store
                .account_by_name(&claims.name)
                .await
                .map_err(unavailable)?
                .is_some()
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::PasswordRequired,
                "this name now belongs to an account: sign in with its password",
            ));
        }
        Ok(claims)
    } else {
        // Tokens minted before accounts existed (`u-<name>`), or anything else.
        Err(refused(
            "this token is from an older version: sign in again",
        ))
    }
}

/// `POST /api/register`: a new account, signed in.
#[utoipa::path(post, path = "/api/register", tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account, signed in", body = LoginResponse),
        (status = 400, description = "`invalid_username`, `weak_password` or `invalid_request`", body = ErrorBody),
        (status = 409, description = "`username_taken`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable` (accounts need a store)", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<LoginResponse>), ApiError> {
    check_username(&req.username)?;
    if !password::acceptable(&req.password) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WeakPassword,
            format!("passwords are {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters"),
        ));
    }
    let store = store(&state)?;
    // Cheap check first, so a taken name costs no hash; the unique index decides races.
    if store
        .account_by_name(&req.username)
        .await
        .map_err(unavailable)?
        .is_some()
    {
        return Err(username_taken());
    }
    let hash = state
        .accounts()
        .passwords
        .hash(&req.password)
        .await
        .map_err(ApiError::internal)?;
    let account = Account {
        user_id: ids::new_account_id(),
        username: req.username,
        password_hash: hash,
        token_gen: 1,
        created_at_ms: berth_protocol::now_ms(),
    };
    match store.create_account(&account).await {
        Ok(()) => {}
        Err(StoreError::UsernameTaken) => return Err(username_taken()),
        Err(e) => return Err(unavailable(e)),
    }
    tracing::info!(user_id = %account.user_id, "account registered");
    let answer = signed_in(&state, &account.user_id, &account.username, false, 1)?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `POST /api/login`: with a password, an account; without one, a guest.
#[utoipa::path(post, path = "/api/login", tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in: a user token", body = LoginResponse),
        (status = 400, description = "`invalid_username` or `invalid_request`", body = ErrorBody),
        (status = 401, description = "`invalid_credentials` or `password_required`", body = ErrorBody),
        (status = 403, description = "`guests_disabled`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    check_username(&req.username)?;
    // An empty password is no password: a guest.
    match req.password.filter(|p| !p.is_empty()) {
        Some(password) => {
            let account = check_password(&state, &req.username, &password, addr.known()).await?;
            tracing::debug!(user_id = %account.user_id, "signed in");
            Ok(Json(signed_in(
                &state,
                &account.user_id,
                &account.username,
                false,
                account.token_gen,
            )?))
        }
        None => {
            if let Some(store) = state.store()
                && store
                    .account_by_name(&req.username)
                    .await
                    .map_err(unavailable)?
                    .is_some()
            {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::PasswordRequired,
                    "this name belongs to an account: sign in with its password",
                ));
            }
            if !state.accounts().guests {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    ErrorCode::GuestsDisabled,
                    "guests are disabled here: create an account or sign in",
                ));
            }
            let user_id = ids::guest_user_id(&req.username);
            tracing::debug!(user_id = %user_id, "guest signed in");
            Ok(Json(signed_in(&state, &user_id, &req.username, true, 0)?))
        }
    }
}

/// `GET /api/me`: who the token names.
#[utoipa::path(get, path = "/api/me", tag = "accounts",
    security(("user_token" = [])),
    responses(
        (status = 200, description = "Who the token names", body = MeResponse),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn me(AuthUser(user): AuthUser) -> Json<MeResponse> {
    Json(MeResponse {
        user_id: user.sub,
        username: user.name,
        guest: user.guest,
    })
}

/// `POST /api/token/refresh`: a fresh token (new expiry) for a valid one of Berth's own.
#[utoipa::path(post, path = "/api/token/refresh", tag = "accounts",
    security(("user_token" = [])),
    responses(
        (status = 200, description = "A fresh token", body = LoginResponse),
        (status = 400, description = "`invalid_request`: an identity provider's token", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<LoginResponse>, ApiError> {
    if user.sub.starts_with(ids::EXTERNAL_ID_PREFIX) {
        return Err(ApiError::invalid_request(
            "tokens of your identity provider are renewed by the provider",
        ));
    }
    Ok(Json(signed_in(
        &state,
        &user.sub,
        &user.name,
        user.guest,
        user.token_gen,
    )?))
}

/// `POST /api/me/password`: changes an account's password (the old one is needed); every token
/// issued before stops working, and the answer carries a new one.
#[utoipa::path(post, path = "/api/me/password", tag = "accounts",
    request_body = ChangePasswordRequest,
    security(("user_token" = [])),
    responses(
        (status = 200, description = "Changed: a new token (older ones stop working)", body = LoginResponse),
        (status = 400, description = "`weak_password` or `invalid_request`", body = ErrorBody),
        (status = 401, description = "`unauthorized` or `invalid_credentials`", body = ErrorBody),
        (status = 403, description = "`account_required`", body = ErrorBody),
        (status = 409, description = "`invalid_request`: changed meanwhile", body = ErrorBody),
        (status = 429, description = "`rate_limited` (with `Retry-After`)", body = ErrorBody),
        (status = 503, description = "`store_unavailable`", body = ErrorBody),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    addr: ClientAddr,
    AuthUser(user): AuthUser,
    // Read after the account check: a guest is told why before its body is looked at.
    body: Result<JsonBody<ChangePasswordRequest>, ApiError>,
) -> Result<Json<LoginResponse>, ApiError> {
    if !user.sub.starts_with(ids::ACCOUNT_ID_PREFIX) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AccountRequired,
            "only accounts have a password",
        ));
    }
    let JsonBody(req) = body?;
    if !password::acceptable(&req.new_password) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::WeakPassword,
            format!("passwords are {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters"),
        ));
    }
    let account = check_password(&state, &user.name, &req.old_password, addr.known()).await?;
    if account.user_id != user.sub {
        return Err(ApiError::unauthorized("this account no longer exists"));
    }
    let hash = state
        .accounts()
        .passwords
        .hash(&req.new_password)
        .await
        .map_err(ApiError::internal)?;
    let store = store(&state)?;
    let token_gen = store
        .set_password(&account.user_id, &hash, account.token_gen)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::InvalidRequest,
                "the password was changed meanwhile: sign in again",
            )
        })?;
    tracing::info!(user_id = %account.user_id, "password changed");
    Ok(Json(signed_in(
        &state,
        &account.user_id,
        &account.username,
        false,
        token_gen,
    )?))
}

/// The account of `username` when `password` is its password. Throttled per name and address;
/// an unknown name and a wrong password answer alike, after the same argon2 work.
async fn check_password(
    state: &AppState,
    username: &str,
    password: &str,
    addr: Option<IpAddr>,
) -> Result<Account, ApiError> {
    let accounts = state.accounts();
    let attempt = accounts
        .throttle
        .begin(&ids::username_key(username), addr)
        .map_err(|secs| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many failed sign-ins: wait a little",
            )
            .retry_after(secs)
        })?;
    let store = store(state)?;
    let account = store.account_by_name(username).await.map_err(unavailable)?;
    // An overlong password is refused like a wrong one, after the same work.
    let candidate = if password.chars().count() > MAX_PASSWORD_CHARS {
        ""
    } else {
        password
    };
    let matched = accounts
        .passwords
        .verify(
            candidate,
            account.as_ref().map(|a| a.password_hash.as_str()),
        )
        .await
        .map_err(ApiError::internal)?
        && !candidate.is_empty();
    match account {
        Some(account) if matched => {
            accounts.throttle.succeeded(attempt);
            Ok(account)
        }
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidCredentials,
            "wrong username or password",
        )),
    }
}

/// The sign-in answer: a new user token and who it names.
fn signed_in(
    state: &AppState,
    user_id: &str,
    username: &str,
    guest: bool,
    token_gen: u64,
) -> Result<LoginResponse, ApiError> {
    let (token, exp) = state
        .issuer()
        .mint_user(user_id, username, guest, token_gen)
        .map_err(ApiError::internal)?;
    Ok(LoginResponse {
        token,
        user_id: user_id.to_owned(),
        username: username.to_owned(),
        guest,
        expires_at: Some(tokens::rfc3339(exp)),
    })
}

fn check_username(name: &str) -> Result<(), ApiError> {
    if ids::is_valid_username(name) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidUsername,
            "usernames are 1-32 letters, digits, '_' or '-'",
        ))
    }
}

fn store(state: &AppState) -> Result<&Store, ApiError> {
    state.store().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::StoreUnavailable,
            "this deployment keeps no accounts (--store none)",
        )
    })
}

fn unavailable(e: StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StoreUnavailable,
        "the account store is unavailable, try again shortly",
    )
    .with_cause(e)
}

fn username_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorCode::UsernameTaken,
        "that username is taken",
    )
}
