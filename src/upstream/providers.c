/* providers.c - the table of provider kinds. See providers.h. */
#include "upstream/providers.h"

#include <stdio.h>
#include <string.h>

static provider *create_sim(const provider_instance_config *cfg, const provider_env *env) {
  provider *p = sim_provider_create(&env->sim);
  if (p) snprintf(p->name, sizeof p->name, "%s", cfg->name);
  return p;
}

static provider *create_gemini(const provider_instance_config *cfg, const provider_env *env) {
  return gemini_provider_create(cfg, env->loop);
}

static provider *create_openai(const provider_instance_config *cfg, const provider_env *env) {
  return openai_provider_create(cfg, env->loop);
}

static const provider_kind kinds[] = {
    {"sim", create_sim},
    {"gemini", create_gemini},
    {"openai", create_openai},
};

const provider_kind *provider_kind_find(const char *kind) {
  for (size_t i = 0; kind && i < sizeof kinds / sizeof kinds[0]; i++)
    if (strcmp(kinds[i].kind, kind) == 0) return &kinds[i];
  return NULL;
}

void provider_kind_names(char *out, size_t size) {
  size_t used = 0;
  if (size) out[0] = '\0';
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0] && used < size; i++) {
    int n = snprintf(out + used, size - used, "%s%s", i ? ", " : "", kinds[i].kind);
    if (n < 0) break;
    used += (size_t)n;
  }
}

provider *provider_create(const provider_instance_config *cfg, const provider_env *env) {
  const provider_kind *k = provider_kind_find(cfg->kind);
  return k ? k->create(cfg, env) : NULL;
}
