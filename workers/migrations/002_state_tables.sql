-- Current state per kind, kept by the default handlers for the merchant to query.

CREATE TABLE hypercard_card_applications (
    application_key text PRIMARY KEY,  -- mc_trade_no, or notification:<digest of the notification key> when the platform sent none
    mc_trade_no text,
    card_type_id text NOT NULL,
    email text NOT NULL,
    mobile_code text NOT NULL,
    mobile text NOT NULL,
    result smallint NOT NULL,  -- 1 success, 2 failure
    remark text,
    event_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hypercard_recharges (
    mc_trade_no text PRIMARY KEY,
    card_id text NOT NULL,
    result smallint NOT NULL,  -- 1 success, 2 failure
    remark text,
    event_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hypercard_card_operations (
    request_number text PRIMARY KEY,
    card_id text NOT NULL,
    operate_status smallint NOT NULL,  -- 0 in operation, 1 success, 2 fail, 98 pending payment, 99 waiting
    event_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hypercard_transaction_syncs (
    card_id text PRIMARY KEY,
    last_notified_at timestamptz NOT NULL,
    pending boolean NOT NULL DEFAULT true,  -- cleared by whoever fetches the transaction records (API 2.1.23)
    event_id text NOT NULL
);

CREATE TABLE hypercard_coin_purchases (
    tx_id text PRIMARY KEY,
    mc_trade_no text NOT NULL,
    card_id text NOT NULL,
    status smallint NOT NULL,  -- 0 pending, 1 success, 2 fail
    reason text,
    event_id text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hypercard_card_cancellations (
    card_id text PRIMARY KEY,
    refund_amount numeric NOT NULL,
    event_id text NOT NULL,
    cancelled_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hypercard_auths_3ds (
    auth_id bigint PRIMARY KEY,
    card_id text NOT NULL,
    card_no text NOT NULL,  -- masked by the platform
    txn_currency text NOT NULL,
    txn_amount numeric NOT NULL,
    merchant_name text NOT NULL,
    location_country text NOT NULL,
    auth_result integer NOT NULL,
    expired_time timestamptz NOT NULL,
    created_time timestamptz NOT NULL,
    updated_time timestamptz NOT NULL,
    expired boolean NOT NULL,  -- the notification reached the gateway after expired_time
    app_card_id text,
    app3ds_auth_transaction_id text,
    event_id text NOT NULL
);

CREATE TABLE hypercard_card_type_configs (
    card_type_id text PRIMARY KEY,
    modify_time timestamptz NOT NULL,
    event_id text NOT NULL
);
