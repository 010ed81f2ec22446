/* An FMI 2.0 co-simulation model: dx/dt = -k x + u, integrated exactly over each step.
 * Build against the FMI 2.0 headers (fmpy ships them under fmpy/c-code):
 *   gcc -shared -fPIC -I<fmpy>/c-code -o binaries/linux64/decay.so sources/decay.c -lm */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fmi2Functions.h"

typedef struct { fmi2Real x, u, k, time; } Model;

const char *fmi2GetTypesPlatform(void) { return fmi2TypesPlatform; }
const char *fmi2GetVersion(void) { return fmi2Version; }

fmi2Component fmi2Instantiate(fmi2String name, fmi2Type type, fmi2String guid, fmi2String location,
                              const fmi2CallbackFunctions *cb, fmi2Boolean visible, fmi2Boolean logging) {
    (void)name; (void)guid; (void)location; (void)cb; (void)visible; (void)logging;
    if (type != fmi2CoSimulation) return NULL;
    Model *m = calloc(1, sizeof(Model));
    if (m) { m->x = 1.0; m->k = 1.0; }
    return m;
}
void fmi2FreeInstance(fmi2Component c) { free(c); }
fmi2Status fmi2SetDebugLogging(fmi2Component c, fmi2Boolean on, size_t n, const fmi2String cats[]) {
    (void)c; (void)on; (void)n; (void)cats; return fmi2OK;
}
fmi2Status fmi2SetupExperiment(fmi2Component c, fmi2Boolean tolDefined, fmi2Real tol, fmi2Real start,
                               fmi2Boolean stopDefined, fmi2Real stop) {
    (void)tolDefined; (void)tol; (void)stopDefined; (void)stop;
    ((Model *)c)->time = start; return fmi2OK;
}
fmi2Status fmi2EnterInitializationMode(fmi2Component c) { (void)c; return fmi2OK; }
fmi2Status fmi2ExitInitializationMode(fmi2Component c) { (void)c; return fmi2OK; }
fmi2Status fmi2Terminate(fmi2Component c) { (void)c; return fmi2OK; }
fmi2Status fmi2Reset(fmi2Component c) { Model *m = c; m->x = 1.0; m->u = 0.0; m->k = 1.0; m->time = 0.0; return fmi2OK; }

static fmi2Real *slot(Model *m, fmi2ValueReference vr) {
    switch (vr) { case 0: return &m->x; case 1: return &m->u; case 2: return &m->k; default: return NULL; }
}
fmi2Status fmi2GetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Real v[]) {
    for (size_t i = 0; i < n; i++) { fmi2Real *s = slot(c, vr[i]); if (!s) return fmi2Error; v[i] = *s; }
    return fmi2OK;
}
fmi2Status fmi2SetReal(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Real v[]) {
    for (size_t i = 0; i < n; i++) { fmi2Real *s = slot(c, vr[i]); if (!s) return fmi2Error; *s = v[i]; }
    return fmi2OK;
}
fmi2Status fmi2DoStep(fmi2Component c, fmi2Real t, fmi2Real h, fmi2Boolean noSetPrior) {
    Model *m = c; (void)noSetPrior;
    fmi2Real eq = m->k > 0 ? m->u / m->k : m->x;
    m->x = m->k > 0 ? eq + (m->x - eq) * exp(-m->k * h) : m->x + m->u * h;
    m->time = t + h;
    return fmi2OK;
}
fmi2Status fmi2GetStatus(fmi2Component c, const fmi2StatusKind s, fmi2Status *v) { (void)c; (void)s; *v = fmi2OK; return fmi2OK; }
fmi2Status fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind s, fmi2Real *v) { *v = ((Model *)c)->time; (void)s; return fmi2OK; }
