use sea_orm_migration::prelude::*;

use crate::run_sql;

/// Names compared as people see them (issue 28). From this release the API stores every
/// name of a device, credential, command, job and webhook in Unicode's composed form (NFC)
/// and refuses invisible characters, so `café` typed two ways is one name. Names stored
/// before are brought to NFC here, except where that would make two rows share a name: such
/// a pair (two names that differ only in composition or in invisible characters) is left as
/// it is — renaming or deleting either is the owner's call — and reported, by a warning
/// each in the migration's log and, for as long as it lasts, in the `name_clashes` view
/// (`SELECT * FROM name_clashes`).
#[derive(DeriveMigrationName)]
pub struct Migration;

/// The comparable form of a name: NFC, without the invisible characters the API refuses
/// (format characters — soft hyphen, zero-width ones, bidirectional controls, the BOM — and
/// the invisible fillers). Kept in step with `common::domain::parse_name`.
const UP: &str = r"
CREATE OR REPLACE FUNCTION netcron_name_key(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT normalize(
        regexp_replace(
            name,
            '[\u00AD\u0600-\u0605\u061C\u06DD\u070F\u115F\u1160\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\u2800\u3164\uFEFF\uFFA0\uFFF9-\uFFFB\U000110BD\U000110CD\U0001BCA0-\U0001BCA3\U0001D173-\U0001D17A\U000E0001\U000E0020-\U000E007F]',
            '',
            'g'
        ),
        NFC
    )
$$;

CREATE OR REPLACE VIEW name_clashes AS
    SELECT 'device' AS kind, NULL::uuid AS scope, netcron_name_key(name) AS name_key,
           array_agg(name ORDER BY name) AS names, array_agg(id ORDER BY name) AS ids
      FROM devices GROUP BY netcron_name_key(name) HAVING count(*) > 1
    UNION ALL
    SELECT 'credential', NULL, netcron_name_key(name), array_agg(name ORDER BY name),
           array_agg(id ORDER BY name)
      FROM credentials GROUP BY netcron_name_key(name) HAVING count(*) > 1
    UNION ALL
    SELECT CASE WHEN device_id IS NULL THEN 'job' ELSE 'command' END, device_id,
           netcron_name_key(name), array_agg(name ORDER BY name), array_agg(id ORDER BY name)
      FROM commands GROUP BY device_id, netcron_name_key(name) HAVING count(*) > 1
    UNION ALL
    SELECT 'webhook', NULL, netcron_name_key(name), array_agg(name ORDER BY name),
           array_agg(id ORDER BY name)
      FROM webhooks GROUP BY netcron_name_key(name) HAVING count(*) > 1;

-- Every name that can take its composed form without meeting another row's.
UPDATE devices d SET name = normalize(d.name, NFC)
 WHERE d.name IS NOT NFC NORMALIZED
   AND NOT EXISTS (SELECT 1 FROM name_clashes c WHERE c.kind = 'device' AND d.id = ANY (c.ids));
UPDATE credentials d SET name = normalize(d.name, NFC)
 WHERE d.name IS NOT NFC NORMALIZED
   AND NOT EXISTS (SELECT 1 FROM name_clashes c WHERE c.kind = 'credential' AND d.id = ANY (c.ids));
UPDATE commands d SET name = normalize(d.name, NFC)
 WHERE d.name IS NOT NFC NORMALIZED
   AND NOT EXISTS (SELECT 1 FROM name_clashes c WHERE c.kind IN ('command', 'job') AND d.id = ANY (c.ids));
UPDATE webhooks d SET name = normalize(d.name, NFC)
 WHERE d.name IS NOT NFC NORMALIZED
   AND NOT EXISTS (SELECT 1 FROM name_clashes c WHERE c.kind = 'webhook' AND d.id = ANY (c.ids));

DO $$
DECLARE clash record;
BEGIN
    FOR clash IN SELECT * FROM name_clashes LOOP
        RAISE WARNING 'netcron: % names % look the same (they differ only in Unicode composition or invisible characters); rename one of them (ids %)',
            clash.kind, clash.names, clash.ids;
    END LOOP;
END
$$;
";

const DOWN: &str = "
DROP VIEW IF EXISTS name_clashes;
DROP FUNCTION IF EXISTS netcron_name_key(text);
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        run_sql(manager, DOWN).await
    }
}
