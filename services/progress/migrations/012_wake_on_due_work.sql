-- Wake the completion re-check and the recalculation loops of every progress process at
-- commit when a row is due now (a deferred completion, a recalculation job recorded by
-- save_course or due again): they LISTEN (shared/listener.py) and otherwise poll only
-- rarely. A claim moves due_at into the future (its lease) and does not notify.
-- PostgreSQL folds identical notifications of one transaction into one.
CREATE FUNCTION notify_progress_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], '');
    RETURN NULL;
END $$;

CREATE TRIGGER pending_confirmations_due AFTER INSERT OR UPDATE OF due_at ON pending_confirmations
    FOR EACH ROW WHEN (NEW.due_at <= now()) EXECUTE FUNCTION notify_progress_due('completion_recheck_due');

CREATE TRIGGER course_recalculations_due AFTER INSERT OR UPDATE OF due_at ON course_recalculations
    FOR EACH ROW WHEN (NEW.due_at <= now()) EXECUTE FUNCTION notify_progress_due('recalculation_due');
