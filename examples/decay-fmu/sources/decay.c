/* An FMI 2.0 co-simulation model: dx/dt = -k x + u, integrated exactly over each step.
 * Build against the FMI 2.0 headers (fmpy ships them under fmpy/c-code):
 *   gcc -shared -fPIC -I<fmpy>/c-code -o binaries/linux64/decay.so sources/decay.c -lm */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fmi2Functions.h"

/* stall: wall-clock seconds each step sleeps (0 by default), to make a slow simulation. */
typedef struct { fmi2Real x, u, k, stall, time; } Model;

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
fmi2Status fmi2Reset(fmi2Component c) { Model *m = c; m->x = 1.0; m->u = 0.0; m->k = 1.0; m->stall = 0.0; m->time = 0.0; return fmi2OK; }

static fmi2Real *slot(Model *m, fmi2ValueReference vr) {
    switch (vr) { case 0: return &m->x; case 1: return &m->u; case 2: return &m->k; case 3: return &m->stall; default: return NULL; }
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
    if (m->stall > 0) {
        struct timespec pause = { (time_t)m->stall, (long)((m->stall - (time_t)m->stall) * 1e9) };
        nanosleep(&pause, NULL);
    }
    fmi2Real eq = m->k > 0 ? m->u / m->k : m->x;
    m->x = m->k > 0 ? eq + (m->x - eq) * exp(-m->k * h) : m->x + m->u * h;
    m->time = t + h;
    return fmi2OK;
}
fmi2Status fmi2GetStatus(fmi2Component c, const fmi2StatusKind s, fmi2Status *v) { (void)c; (void)s; *v = fmi2OK; return fmi2OK; }
fmi2Status fmi2GetRealStatus(fmi2Component c, const fmi2StatusKind s, fmi2Real *v) { *v = ((Model *)c)->time; (void)s; return fmi2OK; }

/* The rest of the FMI 2.0 co-simulation interface: this model has only Real variables, no
 * state serialization and no derivatives, so these answer "not supported" (or succeed
 * trivially), as the standard allows. */
fmi2Status fmi2GetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Integer v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2GetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2Boolean v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2GetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, fmi2String v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2SetInteger(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2SetBoolean(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Boolean v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2SetString(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2String v[]) { (void)c; (void)vr; (void)v; return n ? fmi2Error : fmi2OK; }
fmi2Status fmi2GetFMUstate(fmi2Component c, fmi2FMUstate *s) { (void)c; (void)s; return fmi2Error; }
fmi2Status fmi2SetFMUstate(fmi2Component c, fmi2FMUstate s) { (void)c; (void)s; return fmi2Error; }
fmi2Status fmi2FreeFMUstate(fmi2Component c, fmi2FMUstate *s) { (void)c; (void)s; return fmi2Error; }
fmi2Status fmi2SerializedFMUstateSize(fmi2Component c, fmi2FMUstate s, size_t *n) { (void)c; (void)s; (void)n; return fmi2Error; }
fmi2Status fmi2SerializeFMUstate(fmi2Component c, fmi2FMUstate s, fmi2Byte b[], size_t n) { (void)c; (void)s; (void)b; (void)n; return fmi2Error; }
fmi2Status fmi2DeSerializeFMUstate(fmi2Component c, const fmi2Byte b[], size_t n, fmi2FMUstate *s) { (void)c; (void)b; (void)n; (void)s; return fmi2Error; }
fmi2Status fmi2GetDirectionalDerivative(fmi2Component c, const fmi2ValueReference u[], size_t nu, const fmi2ValueReference z[], size_t nz, const fmi2Real dv[], fmi2Real dz[]) {
    (void)c; (void)u; (void)nu; (void)z; (void)nz; (void)dv; (void)dz; return fmi2Error;
}
fmi2Status fmi2SetRealInputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer order[], const fmi2Real v[]) {
    (void)c; (void)vr; (void)n; (void)order; (void)v; return fmi2Error;
}
fmi2Status fmi2GetRealOutputDerivatives(fmi2Component c, const fmi2ValueReference vr[], size_t n, const fmi2Integer order[], fmi2Real v[]) {
    (void)c; (void)vr; (void)n; (void)order; (void)v; return fmi2Error;
}
fmi2Status fmi2CancelStep(fmi2Component c) { (void)c; return fmi2OK; }
fmi2Status fmi2GetIntegerStatus(fmi2Component c, const fmi2StatusKind s, fmi2Integer *v) { (void)c; (void)s; (void)v; return fmi2Discard; }
fmi2Status fmi2GetBooleanStatus(fmi2Component c, const fmi2StatusKind s, fmi2Boolean *v) { (void)c; (void)s; (void)v; return fmi2Discard; }
fmi2Status fmi2GetStringStatus(fmi2Component c, const fmi2StatusKind s, fmi2String *v) { (void)c; (void)s; (void)v; return fmi2Discard; }
