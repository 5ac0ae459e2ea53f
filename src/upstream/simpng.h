/* simpng.h - the picture the simulated provider draws.
 *
 * A real PNG (libpng) of exactly width x height, 8-bit RGB, whose content is
 * a function of the prompt alone: the same prompt always gives the same bytes.
 * It carries tEXt chunks "Software"="imgate sim" and "Comment"=<prompt digest>
 * so nobody mistakes it for a real model's output. Rows are encoded as they
 * are drawn: memory stays near one row plus the compressed output. */
#ifndef IMGATE_SIMPNG_H
#define IMGATE_SIMPNG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Renders into a malloc'd buffer (*png, free it). Sizes from 1 to 16384. */
bool simpng_render(const char *prompt, int width, int height, uint8_t **png, size_t *len);

#endif
