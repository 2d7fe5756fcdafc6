// Types of @hermes/client's ES module (hermes.mjs): the same as hermes.d.ts, plus the
// default export (the whole client: `import Hermes from '@hermes/client'`).
export * from './hermes.js';
import * as Hermes from './hermes.js';
export default Hermes;
