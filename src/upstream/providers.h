/* providers.h - the provider kinds, found by name (as SQLite finds a VFS).
 *
 * Each kind lives in a file of its own (sim.c, gemini.c, openai.c) and has
 * one line in the table of providers.c; configuration names a kind, and the
 * server makes its instances through provider_create. Adding a kind touches
 * its file and that table, nothing else. */
#ifndef IMGATE_PROVIDERS_H
#define IMGATE_PROVIDERS_H

#include <stdbool.h>
#include <stddef.h>

#include "upstream/provider.h"

/* What an instance may need besides its own configuration. */
typedef struct provider_env {
  struct curlloop *loop; /* the shared curl loop (HTTP kinds) */
  sim_config sim;        /* the simulated provider's settings (its name from cfg) */
} provider_env;

typedef struct provider_kind {
  const char *kind; /* "sim", "gemini", "openai" */
  /* NULL on bad configuration or when memory runs out. */
  provider *(*create)(const provider_instance_config *cfg, const provider_env *env);
} provider_kind;

/* The kind named so, or NULL. */
const provider_kind *provider_kind_find(const char *kind);
/* The names of every kind, for messages: "sim, gemini, openai" into out. */
void provider_kind_names(char *out, size_t size);
/* An instance of cfg->kind named cfg->name; NULL for an unknown kind or when
 * the kind refuses the configuration. */
provider *provider_create(const provider_instance_config *cfg, const provider_env *env);

#endif
