-- Application passwords: HTTP Basic credentials (WordPress style) for clients written
-- against the Fluent Community API. Only an argon2id hash is kept; the password is shown
-- once, when created. The profile (name, email, roles) goes into the bearer token the
-- gateway exchanges the credentials for. Revoking keeps the row (revoked_at) for the record.
CREATE TABLE app_passwords (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       text        NOT NULL CHECK (user_id <> '' AND strpos(user_id, ':') = 0),
    label         text        NOT NULL DEFAULT '',
    name          text        NOT NULL DEFAULT '',
    email         text        NOT NULL DEFAULT '',
    roles         text[]      NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- A sign-in looks up the user's live passwords.
CREATE INDEX app_passwords_live ON app_passwords (user_id) WHERE revoked_at IS NULL;

-- Failed sign-ins per user and per client address, in a fixed window: shared by every
-- enrollment process. An attempt is counted (under the row lock) before its password is
-- checked and uncounted if it was right, so concurrent guesses cannot overrun the limit.
CREATE TABLE auth_attempts (
    scope        text        NOT NULL CHECK (scope IN ('user', 'address')),
    key          text        NOT NULL,
    window_start timestamptz NOT NULL,
    failures     integer     NOT NULL CHECK (failures >= 0),
    PRIMARY KEY (scope, key)
);

-- Pruning finds windows long over.
CREATE INDEX auth_attempts_window ON auth_attempts (window_start);
