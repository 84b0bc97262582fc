ALTER TABLE `runners` ADD `revoked_at` integer;--> statement-breakpoint
ALTER TABLE `tenants` ADD `max_api_keys` integer;