-- Wake the mail sender and the delivery loop at commit when a row becomes due to be sent
-- (queued, retried, or resent/replayed by an admin): their workers LISTEN (shared/listener.py)
-- and poll only rarely, as a safety net. Row-level, but PostgreSQL folds identical
-- notifications of one transaction into one. A claim (pending -> sending) does not notify.
-- The channel is the trigger's argument.
CREATE FUNCTION notify_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;

CREATE TRIGGER outgoing_mail_due AFTER INSERT OR UPDATE OF status, next_attempt_at ON outgoing_mail
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION notify_due('mail_due');

CREATE TRIGGER deliveries_due AFTER INSERT OR UPDATE OF status, next_attempt_at ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION notify_due('delivery_due');
